package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/internal/poll"

	"github.com/ldmirror/ldmirror/internal/pkitest"
	"github.com/ldmirror/ldmirror/pki"
)

// These tests run real raft members on 127.0.0.1, each with its own
// listener and bolt store in a temporary directory. Timings are a fifth of
// raft's defaults: quick, but with room for a loaded 2-core machine.

func testLogger() *slog.Logger {
	if os.Getenv("LDMIRROR_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// testConfig is member id's configuration, with a certificate from ca.
func testConfig(t *testing.T, ca *pkitest.CA, id string, witness bool) Config {
	role := pki.RoleData
	if witness {
		role = pki.RoleWitness
	}
	return Config{
		NodeID:             id,
		BindAddr:           "127.0.0.1:0",
		DataDir:            filepath.Join(t.TempDir(), id),
		TLS:                ca.Source(id, role),
		Witness:            witness,
		Logger:             testLogger().With("node", id),
		HeartbeatTimeout:   200 * time.Millisecond,
		ElectionTimeout:    200 * time.Millisecond,
		LeaderLeaseTimeout: 100 * time.Millisecond,
		CommitTimeout:      10 * time.Millisecond,
		DialTimeout:        2 * time.Second,
	}
}

// member is a test host that can be stopped and started again from its
// data directory at the same address.
type member struct {
	t   *testing.T
	cfg Config
	c   *Cluster
	ca  *pkitest.CA // the CA of its certificate
}

func startMember(t *testing.T, cfg Config) *member {
	t.Helper()
	m := &member{t: t, cfg: cfg}
	m.start()
	t.Cleanup(m.stop)
	return m
}

func (m *member) start() {
	m.t.Helper()
	c, err := Open(m.cfg)
	if err != nil {
		m.t.Fatalf("open %s: %v", m.cfg.NodeID, err)
	}
	m.c = c
	// Restart at the same address: the others know it from the raft
	// configuration.
	m.cfg.BindAddr = c.Addr()
}

func (m *member) stop() {
	if m.c != nil {
		if err := m.c.Close(); err != nil {
			m.t.Errorf("close %s: %v", m.cfg.NodeID, err)
		}
		m.c = nil
	}
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// startTrio bootstraps a three-voter cluster: data hosts a and b, witness
// w. first names who bootstraps; the others join through the one before
// them, so joins exercise forwarding from a follower.
func startTrio(t *testing.T, first string, tweak func(*Config)) map[string]*member {
	t.Helper()
	ca := pkitest.New(t)
	ms := map[string]*member{}
	order := []string{first}
	for _, id := range []string{"a", "b", "w"} {
		if id != first {
			order = append(order, id)
		}
	}
	for i, id := range order {
		cfg := testConfig(t, ca, id, id == "w")
		if tweak != nil {
			tweak(&cfg)
		}
		m := startMember(t, cfg)
		m.ca = ca
		ms[id] = m
		ctx := ctxFor(t, 10*time.Second)
		if i == 0 {
			if err := m.c.Bootstrap(ctx); err != nil {
				t.Fatalf("bootstrap %s: %v", id, err)
			}
			continue
		}
		if err := m.c.Join(ctx, ms[order[i-1]].c.Addr()); err != nil {
			t.Fatalf("join %s: %v", id, err)
		}
	}
	for _, m := range ms {
		poll.Until(t, 5*time.Second, m.cfg.NodeID+" to see all three hosts", func() bool { return len(m.c.State().Hosts) == 3 })
	}
	return ms
}

// converged waits until every running member has applied the same state.
func converged(t *testing.T, ms map[string]*member, want func(VolumeState) bool) {
	t.Helper()
	for id, m := range ms {
		if m.c == nil {
			continue
		}
		poll.Until(t, 5*time.Second, id+" to apply the change", func() bool { return want(m.c.State()) })
	}
}

// makePrimary makes node primary in epoch 1, as an operator does a fresh
// pair's first (forced) promotion through member c, and node then records
// its peer uptodate, as it does after the first resync.
func makePrimary(t *testing.T, ctx context.Context, ms map[string]*member, c *Cluster, node string) {
	t.Helper()
	if e, err := c.Promote(ctx, node, true, "first primary"); err != nil || e != 1 {
		t.Fatalf("promote %s: epoch %d, %v; want 1", node, e, err)
	}
	peer := map[string]string{"a": "b", "b": "a"}[node]
	if err := ms[node].c.SetDiskState(ctx, peer, DiskUpToDate, 1); err != nil {
		t.Fatal(err)
	}
}

func stripIndex(s VolumeState) VolumeState {
	s.Index = 0
	return s
}

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

// TestConsistentAfterRestart: a member restarted from a snapshot that names
// it primary, while the others moved on by several epochs, replays old
// states; Consistent returns only once its own copy has caught up, and
// its State and Watch do not go back from there.
func TestConsistentAfterRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("restarts a member")
	}
	ms := startTrio(t, "a", nil)
	ctx := ctxFor(t, 20*time.Second)
	a, b := ms["a"].c, ms["b"].c
	makePrimary(t, ctx, ms, a, "a")
	if _, err := a.TransferPrimary(ctx, "a", "b", 1); err != nil {
		t.Fatal(err)
	}
	converged(t, ms, func(s VolumeState) bool { return s.Primary == "b" })
	if err := b.Snapshot(ctx); err != nil {
		t.Fatal(err)
	}
	ms["b"].stop()
	primary := "b"
	for e := Epoch(2); e < 8; e += 2 {
		if _, err := a.Demote(ctx, primary, e); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Promote(ctx, "a", false, ""); err != nil {
			t.Fatal(err)
		}
		primary = "a"
	}
	leader, err := a.Consistent(ctx)
	if err != nil || leader.Primary != "a" || leader.Epoch != 8 {
		t.Fatalf("leader's state: %+v, %v; want a primary in epoch 8", leader, err)
	}

	ms["b"].start()
	b = ms["b"].c
	s, err := b.Consistent(ctx)
	local := b.State()
	if err != nil || s.Index < leader.Index || s.Primary != "a" || s.Epoch != 8 {
		t.Fatalf("consistent read on the restarted member: %+v, %v; want a primary in epoch 8, index >= %d", s, err, leader.Index)
	}
	if local.Index < s.Index || local.Epoch != 8 {
		t.Fatalf("after Consistent returned index %d, the member's own copy is at index %d, epoch %d", s.Index, local.Index, local.Epoch)
	}
	if w := <-b.Watch(ctx); w.Index < s.Index {
		t.Fatalf("after Consistent returned index %d, Watch starts at index %d", s.Index, w.Index)
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

// TestRestartAll: every member stops; the log and snapshots bring the same
// state back.
func TestRestartAll(t *testing.T) {
	if testing.Short() {
		t.Skip("restarts a whole cluster")
	}
	ms := startTrio(t, "a", func(c *Config) { c.SnapshotThreshold, c.TrailingLogs = 8, 4 })
	ctx := ctxFor(t, 30*time.Second)
	a := ms["a"].c
	makePrimary(t, ctx, ms, ms["b"].c, "a") // submitted on a follower
	for seq := uint64(1); seq <= 30; seq++ {
		if err := ms["b"].c.AckSeq(ctx, "b", 1, seq); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.MarkPeerOutdated(ctx, 1, "b"); err != nil {
		t.Fatal(err)
	}
	if _, err := ms["b"].c.Promote(ctx, "b", true, "drill"); err != nil {
		t.Fatal(err)
	}
	before, err := a.Consistent(ctx)
	if err != nil {
		t.Fatal(err)
	}
	converged(t, ms, func(s VolumeState) bool { return s.Index >= before.Index })
	for _, m := range ms {
		if err := m.c.Snapshot(ctx); err != nil {
			t.Fatalf("snapshot %s: %v", m.cfg.NodeID, err)
		}
	}
	if err := a.AckSeq(ctx, "a", 2, 3); err != nil { // an entry after the snapshot
		t.Fatal(err)
	}
	before, err = a.Consistent(ctx)
	if err != nil {
		t.Fatal(err)
	}
	converged(t, ms, func(s VolumeState) bool { return s.Index >= before.Index })

	for _, m := range ms {
		m.stop()
	}
	for _, m := range ms {
		snaps, _ := os.ReadDir(filepath.Join(m.cfg.DataDir, SnapshotDir))
		if len(snaps) == 0 {
			t.Fatalf("%s has no snapshot on disk", m.cfg.NodeID)
		}
		m.start()
	}
	after, err := ms["w"].c.Consistent(ctx)
	if err != nil {
		t.Fatalf("read after restart: %v", err)
	}
	if fmt.Sprintf("%+v", stripIndex(after)) != fmt.Sprintf("%+v", stripIndex(before)) {
		t.Fatalf("state changed across restart:\nbefore %+v\n after %+v", before, after)
	}
	if after.Epoch != 2 || after.ForcedPromotions != 2 {
		t.Fatalf("restored state %+v", after)
	}
	converged(t, ms, func(s VolumeState) bool {
		return fmt.Sprintf("%+v", stripIndex(s)) == fmt.Sprintf("%+v", stripIndex(before))
	})
	// And the restarted cluster still commits.
	if _, err := ms["a"].c.Demote(ctx, "b", 2); err != nil {
		t.Fatalf("commit after restart: %v", err)
	}
}

// TestCorruptStore: a damaged bolt file or snapshot fails Open with
// ErrCorruptStore and the file's name, instead of a panic or a wrong state.
func TestCorruptStore(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and damages raft stores")
	}
	// seed makes a one-member cluster with some entries and a snapshot.
	seed := func(t *testing.T) Config {
		cfg := testConfig(t, pkitest.New(t), "a", false)
		m := startMember(t, cfg)
		ctx := ctxFor(t, 10*time.Second)
		if err := m.c.Bootstrap(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := m.c.Promote(ctx, "a", true, "seed"); err != nil {
			t.Fatal(err)
		}
		if err := m.c.Snapshot(ctx); err != nil {
			t.Fatal(err)
		}
		m.stop()
		return m.cfg
	}
	damage := func(t *testing.T, path string, off int64, n int) {
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt([]byte(strings.Repeat("\xa5", n)), off); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("bolt meta pages", func(t *testing.T) {
		cfg := seed(t)
		path := filepath.Join(cfg.DataDir, StoreFile)
		damage(t, path, 0, 8192)
		_, err := Open(cfg)
		if !errors.Is(err, ErrCorruptStore) || !strings.Contains(err.Error(), path) {
			t.Fatalf("open: %v, want ErrCorruptStore naming %s", err, path)
		}
	})
	t.Run("bolt data pages", func(t *testing.T) {
		cfg := seed(t)
		path := filepath.Join(cfg.DataDir, StoreFile)
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		damage(t, path, 8192, int(fi.Size())-8192) // all but the meta pages
		_, err = Open(cfg)
		if !errors.Is(err, ErrCorruptStore) || !strings.Contains(err.Error(), path) {
			t.Fatalf("open: %v, want ErrCorruptStore naming %s", err, path)
		}
	})
	t.Run("log entry", func(t *testing.T) {
		cfg := seed(t)
		path := filepath.Join(cfg.DataDir, StoreFile)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		i := bytes.Index(b, []byte("\x01{\"op\":\"promote\""))
		if i < 0 {
			t.Fatal("no promote command found in the store")
		}
		damage(t, path, int64(i+1), 1) // the JSON no longer parses
		_, err = Open(cfg)
		if !errors.Is(err, ErrCorruptStore) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "log entry") {
			t.Fatalf("open: %v, want ErrCorruptStore naming %s and the log entry", err, path)
		}
	})
	t.Run("bolt truncated", func(t *testing.T) {
		cfg := seed(t)
		path := filepath.Join(cfg.DataDir, StoreFile)
		if err := os.Truncate(path, 100); err != nil {
			t.Fatal(err)
		}
		_, err := Open(cfg)
		if !errors.Is(err, ErrCorruptStore) || !strings.Contains(err.Error(), path) {
			t.Fatalf("open: %v, want ErrCorruptStore naming %s", err, path)
		}
	})
	t.Run("snapshot state", func(t *testing.T) {
		cfg := seed(t)
		dirs, err := filepath.Glob(filepath.Join(cfg.DataDir, SnapshotDir, "*", "state.bin"))
		if err != nil || len(dirs) == 0 {
			t.Fatalf("no snapshot to damage: %v", err)
		}
		damage(t, dirs[0], 0, 4)
		_, err = Open(cfg)
		if !errors.Is(err, ErrCorruptStore) || !strings.Contains(err.Error(), filepath.Dir(dirs[0])) {
			t.Fatalf("open: %v, want ErrCorruptStore naming %s", err, filepath.Dir(dirs[0]))
		}
	})
	t.Run("snapshot meta", func(t *testing.T) {
		cfg := seed(t)
		metas, _ := filepath.Glob(filepath.Join(cfg.DataDir, SnapshotDir, "*", "meta.json"))
		if len(metas) == 0 {
			t.Fatal("no snapshot metadata to damage")
		}
		damage(t, metas[0], 0, 1)
		_, err := Open(cfg)
		if !errors.Is(err, ErrCorruptStore) || !strings.Contains(err.Error(), filepath.Dir(metas[0])) {
			t.Fatalf("open: %v, want ErrCorruptStore naming %s", err, filepath.Dir(metas[0]))
		}
	})
	t.Run("intact store reopens", func(t *testing.T) {
		cfg := seed(t)
		m := startMember(t, cfg)
		poll.Until(t, 5*time.Second, "state to come back", func() bool {
			h, _ := m.c.State().Host("a")
			return h.Disk == DiskUpToDate
		})
	})
	t.Run("empty store file is a fresh store", func(t *testing.T) {
		cfg := testConfig(t, pkitest.New(t), "a", false)
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(cfg.DataDir, StoreFile), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		m := startMember(t, cfg)
		if err := m.c.Bootstrap(ctxFor(t, 10*time.Second)); err != nil {
			t.Fatalf("bootstrap on an empty store file: %v", err)
		}
	})
	t.Run("locked by another member", func(t *testing.T) {
		cfg := seed(t)
		startMember(t, cfg)
		cfg.BindAddr = "127.0.0.1:0"
		_, err := Open(cfg)
		if err == nil || !strings.Contains(err.Error(), "locked") {
			t.Fatalf("second open of one directory: %v, want a lock error", err)
		}
	})
}

// TestForeignCA: a host with a certificate of another CA cannot join, and
// nothing it sent is applied.
func TestForeignCA(t *testing.T) {
	ms := startTrio(t, "a", nil)
	ctx := ctxFor(t, 10*time.Second)
	before, err := ms["a"].c.Consistent(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, pkitest.New(t), "x", true)
	x := startMember(t, cfg)
	if err := x.c.Bootstrap(ctxFor(t, 5*time.Second)); err != nil {
		t.Fatalf("intruder's own bootstrap: %v", err)
	}
	err = x.c.Join(ctx, ms["b"].c.Addr())
	if !errors.Is(err, ErrAuth) {
		t.Fatalf("join with another CA's certificate: %v, want ErrAuth", err)
	}
	after, err := ms["a"].c.Consistent(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := after.Host("x"); ok || len(after.Hosts) != len(before.Hosts) {
		t.Fatalf("intruder registered: %+v", after)
	}
	members, err := ms["a"].c.Members(ctx)
	if err != nil || len(members) != 3 {
		t.Fatalf("members after intrusion: %+v, %v", members, err)
	}
	if _, ok := x.c.State().Host("a"); ok {
		t.Fatal("intruder learned the cluster's state")
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
	if err := a.MarkPeerOutdated(ctx, 1, "b"); err != nil {
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

// rawCall sends req to the member at addr as the node creds names, over
// the cluster port's RPC channel, and returns the member's answer.
func rawCall(t *testing.T, creds *pki.Source, addr string, req rpcRequest) error {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := newMux(ln, ln.Addr().String(), creds, 2*time.Second, testLogger())
	defer m.close()
	conn, err := m.dial(ctxFor(t, 5*time.Second), addr, chanRPC)
	if err != nil {
		return err
	}
	defer conn.Close()
	req.TimeoutMS = 5000
	if err := writeMsg(conn, req); err != nil {
		t.Fatal(err)
	}
	var resp rpcResponse
	if err := readMsg(conn, &resp); err != nil {
		t.Fatal(err)
	}
	return decodeError(resp.Code, resp.Err)
}

// TestSenderIdentity: the witness cannot submit data-host state in a data
// host's name (mark-outdated, transfer, set-disk, ack-seq, report-ready),
// nor can a node whose certificate names another node join or act as it;
// a member whose certificate names another node does not start. The state
// is what the data hosts made it.
func TestSenderIdentity(t *testing.T) {
	ms := startTrio(t, "a", nil)
	ctx := ctxFor(t, 30*time.Second)
	a, w := ms["a"].c, ms["w"].c
	makePrimary(t, ctx, ms, a, "a")
	before, err := a.Consistent(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []command{
		{Op: opMarkOutdated, By: "a", Node: "b", Epoch: 1},
		{Op: opTransfer, By: "a", Node: "b", Epoch: 1},
		{Op: opSetDisk, Node: "b", Disk: DiskOutdated, Epoch: 1},
		{Op: opAckSeq, Node: "b", Seq: 7, Epoch: 1},
		{Op: opReportReady, Node: "a", Ready: false, Detail: "forged"},
		// Claiming to be a in the stamp itself: the leader overwrites it.
		{Op: opMarkOutdated, By: "a", Node: "b", Epoch: 1, Sender: "a"},
	} {
		if _, err := w.submit(ctx, cmd); !errors.Is(err, ErrNotAuthorized) {
			t.Fatalf("witness submits %s in a's name: %v, want ErrNotAuthorized", cmd.Op, err)
		}
	}

	// c holds a data-host certificate of the cluster's CA, for c.
	c := ms["a"].ca.Source("c", pki.RoleData)
	leader := func() string { _, addr := a.Leader(); return addr }
	if err := rawCall(t, c, leader(), rpcRequest{Op: rpcJoin, Member: Member{ID: "b", Addr: "127.0.0.1:1"}}); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("c joins as b: %v, want ErrNotAuthorized", err)
	}
	forged, err := command{Op: opMarkOutdated, By: "a", Node: "b", Epoch: 1}.encode()
	if err != nil {
		t.Fatal(err)
	}
	if err := rawCall(t, c, leader(), rpcRequest{Op: rpcApply, Command: forged, Forwarded: true}); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("c marks b outdated in a's name: %v, want ErrNotAuthorized", err)
	}
	// Nor may c talk raft: it is not in the configuration.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cm := newMux(ln, ln.Addr().String(), c, 2*time.Second, testLogger())
	defer cm.close()
	if _, err := cm.dial(ctx, a.Addr(), chanRaft); !errors.Is(err, ErrAuth) {
		t.Fatalf("raft connection from c: %v, want ErrAuth", err)
	}
	cfg := testConfig(t, ms["a"].ca, "b", false)
	cfg.TLS = c
	if _, err := Open(cfg); err == nil || !strings.Contains(err.Error(), "names data c, this member is data b") {
		t.Fatalf("member b with c's certificate: %v", err)
	}

	after, err := a.Consistent(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(stripIndex(after)) != fmt.Sprint(stripIndex(before)) {
		t.Fatalf("refused commands changed the state:\nbefore %+v\n after %+v", before, after)
	}
	// The witness still does what an operator may.
	if _, err := w.Demote(ctx, "a", 1); err != nil {
		t.Fatalf("demote through the witness: %v", err)
	}
}
