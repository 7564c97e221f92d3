package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/internal/poll"
)

// These tests run real raft members on 127.0.0.1, each with its own
// listener and bolt store in a temporary directory. Timings are a fifth of
// raft's defaults: quick, but with room for a loaded 2-core machine.

func TestBootstrapAndJoin(t *testing.T) {
	ms := startTrio(t, "a", nil)
	ctx := ctxFor(t, 10*time.Second)

	members, err := ms["w"].c.Members(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(members) != 3 {
		t.Fatalf("members %+v, want 3", members)
	}
	leaders := 0
	for _, m := range members {
		if !m.Voter {
			t.Errorf("%s is not a voter: a non-voting witness breaks no tie", m.ID)
		}
		if m.Witness != (m.ID == "w") {
			t.Errorf("%s witness=%t", m.ID, m.Witness)
		}
		if m.Addr != ms[m.ID].c.Addr() {
			t.Errorf("%s addr %q, want %q", m.ID, m.Addr, ms[m.ID].c.Addr())
		}
		if m.Leader {
			leaders++
		}
	}
	if leaders != 1 {
		t.Errorf("%d leaders in %+v", leaders, members)
	}

	// A read from the witness goes through the leader.
	s, err := ms["w"].c.Consistent(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []HostState{
		{ID: "a", Disk: DiskInconsistent},
		{ID: "b", Disk: DiskInconsistent},
		{ID: "w", Witness: true, Disk: DiskDiskless},
	}
	if fmt.Sprint(s.Hosts) != fmt.Sprint(want) || s.Primary != "" || s.Epoch != 0 {
		t.Fatalf("state after bootstrap %+v, want hosts %+v, no primary, epoch 0", s, want)
	}

	// Joining again is harmless; so is bootstrapping a member again.
	if err := ms["b"].c.Join(ctx, ms["a"].c.Addr()); err != nil {
		t.Fatalf("second join: %v", err)
	}
	if err := ms["a"].c.Bootstrap(ctx); err != nil {
		t.Fatalf("second bootstrap: %v", err)
	}
	if members, _ := ms["a"].c.Members(ctx); len(members) != 3 {
		t.Fatalf("members after repeats: %+v", members)
	}
	st := ms["a"].c.Status()
	if st.Leader == "" || st.Volume.Index == 0 || st.AppliedIndex < st.Volume.Index {
		t.Fatalf("status %+v", st)
	}
}

// TestRolesAndEpochs drives promote, swap, demote and failover through
// members that are not the leader, and checks the epoch and that all
// members agree.
func TestRolesAndEpochs(t *testing.T) {
	ms := startTrio(t, "a", nil)
	ctx := ctxFor(t, 20*time.Second)
	a, b, w := ms["a"].c, ms["b"].c, ms["w"].c

	watch := b.Watch(ctx)
	if s := <-watch; s.Epoch != 0 {
		t.Fatalf("watch starts at epoch %d", s.Epoch)
	}
	if _, err := w.Promote(ctx, "b", false, ""); !errors.Is(err, ErrNotUpToDate) {
		t.Fatalf("promote of inconsistent b: %v, want ErrNotUpToDate", err)
	}
	e, err := b.Promote(ctx, "a", true, "first primary")
	if err != nil || e != 1 {
		t.Fatalf("promote a: epoch %d, %v; want 1", e, err)
	}
	if _, err := w.Promote(ctx, "w", true, "try"); !errors.Is(err, ErrWitness) {
		t.Fatalf("promote witness: %v, want ErrWitness", err)
	}
	if err := a.SetDiskState(ctx, "b", DiskUpToDate, 1); err != nil {
		t.Fatal(err)
	}
	if err := b.AckSeq(ctx, "b", 1, 77); err != nil {
		t.Fatal(err)
	}
	if e, err = a.TransferPrimary(ctx, "a", "b", 1); err != nil || e != 2 {
		t.Fatalf("transfer a→b: epoch %d, %v; want 2", e, err)
	}
	if _, err := a.Demote(ctx, "b", 1); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("demote with stale epoch: %v, want ErrStaleEpoch", err)
	}
	if _, err := a.Demote(ctx, "a", 2); !errors.Is(err, ErrNotPrimary) {
		t.Fatalf("demote of secondary: %v, want ErrNotPrimary", err)
	}
	if e, err = b.Demote(ctx, "b", 2); err != nil || e != 3 {
		t.Fatalf("demote b: epoch %d, %v; want 3", e, err)
	}
	p, e, err := w.Failover(ctx, "", 3) // an operator's move: the witness may
	if err != nil || p != "a" || e != 4 {
		t.Fatalf("failover: %q epoch %d, %v; want a, 4", p, e, err)
	}
	if _, _, err := b.Failover(ctx, "", 3); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("second failover of epoch 3: %v, want ErrStaleEpoch", err)
	}

	converged(t, ms, func(s VolumeState) bool { return s.Epoch == 4 })
	ref := stripIndex(a.State())
	for id, m := range ms {
		if got := stripIndex(m.c.State()); fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", ref) {
			t.Fatalf("%s disagrees:\n %+v\n %+v", id, got, ref)
		}
	}
	if ref.Primary != "a" || ref.EpochIndex == 0 {
		t.Fatalf("final state %+v", ref)
	}
	if h, _ := ref.Host("b"); h.Disk != DiskUpToDate || h.AckedSeq != 77 {
		t.Fatalf("b after a failover with no primary to displace: %+v", h)
	}
	poll.Until(t, 5*time.Second, "watcher on b to see epoch 4", func() bool {
		select {
		case s := <-watch:
			return s.Epoch == 4
		default:
			return false
		}
	})
}

// TestForcedPromotion: an outdated host is refused, a forced promotion is
// accepted, recorded and counted.
func TestForcedPromotion(t *testing.T) {
	ms := startTrio(t, "a", nil)
	ctx := ctxFor(t, 20*time.Second)
	a, b := ms["a"].c, ms["b"].c
	makePrimary(t, ctx, ms, a, "a")
	if err := a.MarkPeerOutdated(ctx, 1, "b"); err != nil {
		t.Fatalf("mark b outdated: %v", err)
	}
	if err := b.MarkPeerOutdated(ctx, 1, "a"); !errors.Is(err, ErrNotPrimary) {
		t.Fatalf("secondary marking the primary outdated: %v, want ErrNotPrimary", err)
	}
	if _, err := b.Promote(ctx, "b", false, ""); !errors.Is(err, ErrNotUpToDate) {
		t.Fatalf("promote outdated b: %v, want ErrNotUpToDate", err)
	}
	if _, _, err := b.Failover(ctx, "a", 1); !errors.Is(err, ErrNotUpToDate) {
		t.Fatalf("failover to outdated b: %v, want ErrNotUpToDate", err)
	}
	if _, err := b.Promote(ctx, "b", true, ""); !errors.Is(err, ErrInvalidCommand) {
		t.Fatalf("forced promotion without reason: %v, want ErrInvalidCommand", err)
	}
	e, err := b.Promote(ctx, "b", true, "site A burned down")
	if err != nil || e != 2 {
		t.Fatalf("forced promote: epoch %d, %v", e, err)
	}
	s, err := a.Consistent(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lf := s.LastForced
	if s.Primary != "b" || s.ForcedPromotions != 2 || lf.Node != "b" || lf.Reason != "site A burned down" ||
		lf.Disk != DiskOutdated || lf.Epoch != 2 || lf.Index != s.EpochIndex || lf.At.IsZero() {
		t.Fatalf("forced promotion not recorded: %+v", s)
	}
	if h, _ := s.Host("a"); h.Disk != DiskOutdated {
		t.Fatalf("displaced primary a is %s, want outdated", h.Disk)
	}
	// The old primary is fenced: its epoch is gone.
	if err := a.MarkPeerOutdated(ctx, 1, "b"); !errors.Is(err, ErrStaleEpoch) {
		t.Fatalf("deposed primary's mark: %v, want ErrStaleEpoch", err)
	}
}

// TestReportReady: a host's readiness report, submitted on a follower, is
// forwarded to the leader; refusals keep their sentinel across the
// forward; every member records the same report and time.
func TestReportReady(t *testing.T) {
	ms := startTrio(t, "a", nil)
	ctx := ctxFor(t, 20*time.Second)
	// b reports its own readiness, from a follower.
	poll.Until(t, 5*time.Second, "a to lead", func() bool { return ms["a"].c.isLeader() })
	// "é" is 2 bytes, so the cut at MaxReadyDetail would split one: the
	// detail is shortened to the rune boundary before it.
	long := "x" + strings.Repeat("é", MaxReadyDetail)
	if err := ms["b"].c.ReportReady(ctx, "b", true, long); err != nil {
		t.Fatalf("b's report via a follower: %v", err)
	}
	if err := ms["w"].c.ReportReady(ctx, "w", true, ""); !errors.Is(err, ErrWitness) {
		t.Fatalf("witness readiness: %v, want ErrWitness", err)
	}
	if err := ms["w"].c.ReportReady(ctx, "b", false, "forged"); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("b's readiness reported by w: %v, want ErrNotAuthorized", err)
	}
	converged(t, ms, func(s VolumeState) bool { h, _ := s.Host("b"); return h.Ready })
	ref, _ := ms["a"].c.State().Host("b")
	if ref.ReadyDetail != long[:MaxReadyDetail-1] || ref.ReadySince.IsZero() {
		t.Fatalf("b's report recorded as %d bytes since %v", len(ref.ReadyDetail), ref.ReadySince)
	}
	for id, m := range ms {
		if h, _ := m.c.State().Host("b"); !reflect.DeepEqual(h, ref) {
			t.Fatalf("%s records b as %+v, a as %+v", id, h, ref)
		}
	}
}

// TestOneMemberDown: with any one member closed, the other two commit; the
// agent's failover works when the primary's host is the one that died.
func TestOneMemberDown(t *testing.T) {
	if testing.Short() {
		t.Skip("elections after a member loss take a few seconds")
	}
	ms := startTrio(t, "a", nil)
	ctx := ctxFor(t, 30*time.Second)
	a := ms["a"].c
	makePrimary(t, ctx, ms, a, "a")

	// Witness down: the pair still commits.
	ms["w"].stop()
	if err := a.AckSeq(ctx, "b", 1, 5); err != nil {
		t.Fatalf("commit without the witness: %v", err)
	}
	ms["w"].start()
	converged(t, ms, func(s VolumeState) bool { h, _ := s.Host("b"); return h.AckedSeq == 5 })

	// Secondary down: the primary outdates it with the witness.
	ms["b"].stop()
	if err := a.MarkPeerOutdated(ctx, 1, "b"); err != nil {
		t.Fatalf("mark outdated with the witness: %v", err)
	}
	ms["b"].start()
	b := ms["b"].c
	converged(t, ms, func(s VolumeState) bool { h, _ := s.Host("b"); return h.Disk == DiskOutdated })
	if err := a.SetDiskState(ctx, "b", DiskUpToDate, 1); err != nil {
		t.Fatalf("resync done: %v", err)
	}

	// Primary (and raft leader) down: b and w elect, and the agent moves
	// the role to b.
	ms["a"].stop()
	p, e, err := b.Failover(ctx, "a", 1)
	if err != nil || p != "b" || e != 2 {
		t.Fatalf("failover after a died: %q epoch %d, %v", p, e, err)
	}
	ms["a"].start()
	converged(t, ms, func(s VolumeState) bool { return s.Epoch == 2 && s.Primary == "b" })
	if h, _ := ms["a"].c.State().Host("a"); h.Disk != DiskOutdated {
		t.Fatalf("returning old primary is %s, want outdated", h.Disk)
	}
}

// TestConsistentWaitsForOwnCopy: a member whose copy is behind the leader's
// (here rewound to an old snapshot, as a restart does) gets ErrBehind from
// Consistent, not the leader's state, until it applies what the leader had.
func TestConsistentWaitsForOwnCopy(t *testing.T) {
	ms := startTrio(t, "a", nil)
	ctx := ctxFor(t, 20*time.Second)
	a, b := ms["a"].c, ms["b"].c
	old, err := b.fsm.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	makePrimary(t, ctx, ms, a, "a")
	leader, err := a.Consistent(ctx)
	if err != nil {
		t.Fatal(err)
	}
	converged(t, ms, func(s VolumeState) bool { return s.Index >= leader.Index })
	if err := b.fsm.Restore(io.NopCloser(bytes.NewReader(old.(fsmSnapshot)))); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	s, err := b.Consistent(short)
	cancel()
	if !errors.Is(err, ErrBehind) {
		t.Fatalf("consistent read on a member rewound to index %d (leader at %d): %+v, %v; want ErrBehind", b.State().Index, leader.Index, s, err)
	}
	// Raft does not apply again what it applied: the copy moves on with the
	// next entry, past the leader's index at the read.
	got := make(chan error, 1)
	go func() {
		s, err := b.Consistent(ctx)
		if err == nil && s.Index < leader.Index {
			err = fmt.Errorf("returned index %d, the leader was at %d", s.Index, leader.Index)
		}
		got <- err
	}()
	if err := a.AckSeq(ctx, "b", 1, 1); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("consistent read once the member applied a newer entry: %v", err)
	}
}

// TestNoQuorum: a primary that lost both peer and witness cannot commit
// "peer outdated"; it gets ErrNoQuorum by its deadline, and succeeds once
// the witness is back.
func TestNoQuorum(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out a commit deadline")
	}
	ms := startTrio(t, "a", nil)
	ctx := ctxFor(t, 30*time.Second)
	a := ms["a"].c
	makePrimary(t, ctx, ms, a, "a")
	ms["b"].stop()
	ms["w"].stop()

	const deadline = 1500 * time.Millisecond
	start := time.Now()
	mctx, cancel := context.WithTimeout(ctx, deadline)
	err := a.MarkPeerOutdated(mctx, 1, "b")
	cancel()
	took := time.Since(start)
	if !errors.Is(err, ErrNoQuorum) {
		t.Fatalf("mark outdated alone: %v, want ErrNoQuorum", err)
	}
	if took > deadline+500*time.Millisecond {
		t.Fatalf("ErrNoQuorum after %s, deadline was %s", took, deadline)
	}
	rctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	_, err = a.Consistent(rctx)
	cancel()
	if !errors.Is(err, ErrNoQuorum) {
		t.Fatalf("consistent read alone: %v, want ErrNoQuorum", err)
	}
	if h, _ := a.State().Host("b"); h.Disk != DiskUpToDate {
		t.Fatalf("b is %s without a commit", h.Disk)
	}

	// Quorum returns with the witness: the suspended primary retries.
	ms["w"].start()
	if err := a.MarkPeerOutdated(ctx, 1, "b"); err != nil {
		t.Fatalf("mark outdated after the witness returned: %v", err)
	}
	s, err := ms["w"].c.Consistent(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h, _ := s.Host("b"); h.Disk != DiskOutdated || s.Primary != "a" || s.Epoch != 1 {
		t.Fatalf("state after quorum returned: %+v", s)
	}
}

// TestWitnessHandsOffLeadership: a witness that leads passes leadership to
// a data host.
func TestWitnessHandsOffLeadership(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the hand-off tick")
	}
	ms := startTrio(t, "w", nil)
	poll.Until(t, 10*time.Second, "a data host to lead", func() bool {
		id, _ := ms["w"].c.Leader()
		return id == "a" || id == "b"
	})
	ctx := ctxFor(t, 10*time.Second)
	if _, err := ms["w"].c.Consistent(ctx); err != nil {
		t.Fatalf("read after hand-off: %v", err)
	}
}

// TestRemoveAndReplaceWitness: the primary cannot be removed; a witness can,
// and a fresh witness that joins in its place restores the quorum.
func TestRemoveAndReplaceWitness(t *testing.T) {
	ms := startTrio(t, "a", nil)
	ctx := ctxFor(t, 20*time.Second)
	a, b := ms["a"].c, ms["b"].c
	makePrimary(t, ctx, ms, a, "a")
	if err := b.Remove(ctx, "a"); !errors.Is(err, ErrIsPrimary) {
		t.Fatalf("remove primary: %v, want ErrIsPrimary", err)
	}
	if err := b.Remove(ctx, "nope"); !errors.Is(err, ErrUnknownNode) {
		t.Fatalf("remove unknown: %v, want ErrUnknownNode", err)
	}
	if err := b.Remove(ctx, "w"); err != nil {
		t.Fatalf("remove witness: %v", err)
	}
	members, err := a.Members(ctx)
	if err != nil || len(members) != 2 {
		t.Fatalf("members after removal: %+v, %v", members, err)
	}
	ms["w"].stop()
	delete(ms, "w")
	converged(t, ms, func(s VolumeState) bool { _, ok := s.Host("w"); return !ok })

	w2 := startMember(t, testConfig(t, ms["a"].ca, "w2", true))
	ms["w2"] = w2
	if err := w2.c.Join(ctx, b.Addr()); err != nil {
		t.Fatalf("replacement witness join: %v", err)
	}
	if members, _ := a.Members(ctx); len(members) != 3 {
		t.Fatalf("members after replacement: %+v", members)
	}
	// The new witness is a real voter: the primary commits with it alone.
	ms["b"].stop()
	// b's stop may take the leadership with it while a commits: the
	// command is idempotent and the node's fence tries it again; so
	// does the test.
	err = a.MarkPeerOutdated(ctx, 1, "b")
	for errors.Is(err, ErrNoQuorum) && ctx.Err() == nil {
		err = a.MarkPeerOutdated(ctx, 1, "b")
	}
	if err != nil {
		t.Fatalf("commit with the replacement witness: %v", err)
	}
	s, err := w2.c.Consistent(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h, ok := s.Host("w2"); !ok || !h.Witness {
		t.Fatalf("w2 not registered as witness: %+v", s)
	}
}
