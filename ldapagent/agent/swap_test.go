package agent

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/internal/poll"
)

// TestAutoFailback: b serves after a failover; a is the preferred host.
// b hands the service back only once a is uptodate and ready, and has been
// for failback_after.
func TestAutoFailback(t *testing.T) {
	e := newEnv(t, "b")
	e.cp.setDisk("a", cluster.DiskOutdated)
	auto := func(c *Config) { c.Failback, c.Preferred = FailbackAuto, "a" }
	b := e.start("b", newAutoProbe().Check, auto)
	n := e.waitHooks(0, promoteSeq("b", 1)...)
	b.waitStatus(t, "hold on the outdated host", func(s Status) bool { return s.Hold == "not failing back: a is outdated" })

	// Uptodate but not ready: no failback, however long.
	e.cp.setDisk("a", cluster.DiskUpToDate)
	e.cp.setReady("a", false, "ready_check failed: exit status 1")
	b.waitStatus(t, "hold on the unready host", func(s Status) bool {
		return s.Hold == "not failing back: a is not ready: ready_check failed: exit status 1"
	})
	e.clock.Advance(10 * testFailbackAfter)
	b.waitStatus(t, "a tick", func(s Status) bool { return s.Service.Probes > 5 })
	if s := b.a.Status(); s.State != StatePrimaryServing || s.Swaps != 0 {
		t.Fatalf("failback toward an unready host: %+v", s)
	}

	// Ready: failback after failback_after, not before.
	e.cp.setReady("a", true, "ready_check passed")
	b.waitStatus(t, "the failback wait", func(s Status) bool { return strings.HasPrefix(s.Hold, "failing back to a once") })
	e.clock.Advance(testFailbackAfter - time.Second)
	probes := b.a.Status().Service.Probes
	b.waitStatus(t, "more probes", func(s Status) bool { return s.Service.Probes >= probes+10 })
	if s := b.a.Status(); s.State != StatePrimaryServing {
		t.Fatalf("failback before failback_after: %+v", s)
	}
	e.clock.Advance(time.Second)
	e.waitHooks(n, append(demoteSeq("b", 1), "b_volume_swap")...)
	s := b.waitState(t, StateSecondaryWatching)
	if st := e.cp.State(); st.Primary != "a" || st.Epoch != 2 {
		t.Fatalf("control plane after failback: %+v", st)
	}
	if s.Swaps != 1 || s.LastSwap == nil || s.LastSwap.To != "a" || s.LastSwap.Epoch != 2 || s.LastSwap.Error != "" ||
		!strings.Contains(s.LastSwap.Reason, "automatic failback") {
		t.Fatalf("status after failback: %+v, last swap %+v", s, s.LastSwap)
	}
}

// TestSwap: an operator's swap runs the demote hooks before Volume.Swap
// and returns the new epoch; the peer's agent then promotes.
func TestSwap(t *testing.T) {
	e := newEnv(t, "a")
	p := newAutoProbe()
	a := e.start("a", p.Check, nil)
	b := e.start("b", p.Check, nil)
	a.waitState(t, StatePrimaryServing)
	b.waitState(t, StateSecondaryWatching)
	poll.Until(t, 10*time.Second, "b to report ready", func() bool { h, _ := e.cp.State().Host("b"); return h.Ready })
	n := len(e.hookLines())
	epoch, err := a.a.Swap(ctxFor(t))
	if err != nil || epoch != 2 {
		t.Fatalf("swap: epoch %d, %v", epoch, err)
	}
	e.waitHooks(n, append(append(demoteSeq("a", 1), "a_volume_swap"), promoteSeq("b", 2)...)...)
	b.waitState(t, StatePrimaryServing)
	s := a.waitState(t, StateSecondaryWatching)
	if s.Swaps != 1 || s.LastSwap.Epoch != 2 || s.LastSwap.Reason != "operator swap" {
		t.Fatalf("a after the swap: %+v", s.LastSwap)
	}
	// An operator's swap does not wait for min_swap_interval: swap back.
	if _, err := a.a.Swap(ctxFor(t)); !errors.Is(err, cluster.ErrNotPrimary) {
		t.Fatalf("swap on the secondary: %v, want ErrNotPrimary", err)
	}
	poll.Until(t, 10*time.Second, "a to report ready", func() bool { h, _ := e.cp.State().Host("a"); return h.Ready })
	if epoch, err := b.a.Swap(ctxFor(t)); err != nil || epoch != 3 {
		t.Fatalf("swap back: epoch %d, %v", epoch, err)
	}
	a.waitState(t, StatePrimaryServing)
}

// TestSwapRefused: a swap needs an uptodate, ready peer.
func TestSwapRefused(t *testing.T) {
	e := newEnv(t, "a")
	a := e.start("a", newAutoProbe().Check, nil)
	a.waitState(t, StatePrimaryServing)
	e.cp.setReady("b", false, "ready_check failed: exit status 1")
	if _, err := a.a.Swap(ctxFor(t)); !errors.Is(err, ErrPeerNotReady) || !strings.Contains(err.Error(), "ready_check failed") {
		t.Fatalf("swap toward an unready peer: %v", err)
	}
	e.cp.setReady("b", true, "ok")
	e.cp.setDisk("b", cluster.DiskInconsistent)
	if _, err := a.a.Swap(ctxFor(t)); !errors.Is(err, cluster.ErrNotUpToDate) {
		t.Fatalf("swap toward an inconsistent peer: %v", err)
	}
	if s := a.a.Status(); s.State != StatePrimaryServing || s.LastSwap != nil {
		t.Fatalf("a refused swap changed something: %+v", s)
	}
	for _, l := range e.hookLines() {
		if strings.Contains(l, SeqDemote) && strings.HasPrefix(l, "a_") {
			t.Fatalf("demote hooks ran for a refused swap: %q", e.hookLines())
		}
	}
}

// TestSwapRestoresService: when Volume.Swap fails, the promote hooks run
// again and the host keeps serving in its epoch.
func TestSwapRestoresService(t *testing.T) {
	e := newEnv(t, "a")
	a := e.start("a", newAutoProbe().Check, nil)
	a.waitState(t, StatePrimaryServing)
	e.cp.setReady("b", true, "ready_check passed")
	a.vol.setSwapErr(errors.New("flush on the peer failed"))
	n := len(e.hookLines())
	_, err := a.a.Swap(ctxFor(t))
	if err == nil || !strings.Contains(err.Error(), "flush on the peer failed") || !strings.Contains(err.Error(), "restored on this host") {
		t.Fatalf("swap: %v", err)
	}
	e.waitHooks(n, append(append(demoteSeq("a", 1), "a_volume_swap"), promoteSeq("a", 1)...)...)
	s := a.waitState(t, StatePrimaryServing)
	if s.ServingEpoch != 1 || s.Swaps != 0 || s.LastSwap == nil || !strings.Contains(s.LastSwap.Error, "flush on the peer failed") {
		t.Fatalf("status after the failed swap: %+v, last swap %+v", s, s.LastSwap)
	}
	if st := e.cp.State(); st.Primary != "a" || st.Epoch != 1 {
		t.Fatalf("control plane: %+v", st)
	}
}

// TestAutoFailbackRestoresAndWaits: a failed automatic failback restores
// the service and waits failback_after again before the next attempt.
func TestAutoFailbackRestoresAndWaits(t *testing.T) {
	e := newEnv(t, "b")
	b := e.start("b", newAutoProbe().Check, func(c *Config) { c.Failback, c.Preferred = FailbackAuto, "a" })
	b.waitState(t, StatePrimaryServing)
	b.vol.setSwapErr(errors.New("peer unreachable"))
	e.cp.setReady("a", true, "ready_check passed")
	b.waitStatus(t, "the failback wait", func(s Status) bool { return strings.HasPrefix(s.Hold, "failing back to a once") })
	e.clock.Advance(testFailbackAfter)
	s := b.waitStatus(t, "a failed failback", func(s Status) bool { return s.LastSwap != nil && s.State == StatePrimaryServing })
	if !strings.Contains(s.LastSwap.Error, "peer unreachable") {
		t.Fatalf("last swap %+v", s.LastSwap)
	}
	b.waitStatus(t, "the failback wait again", func(s Status) bool { return strings.HasPrefix(s.Hold, "failing back to a once") })
	b.vol.setSwapErr(nil)
	e.clock.Advance(testFailbackAfter)
	b.waitState(t, StateSecondaryWatching)
	if st := e.cp.State(); st.Primary != "a" {
		t.Fatalf("control plane: %+v", st)
	}
}

// TestNoFailoverDuringPeerSwap: while the primary's agent reports a swap
// in progress (its demote hooks stop its directory server), the peer's
// agent does not take the failing probes for a failure; once the swap has
// taken longer than swap_timeout it fails over as usual.
func TestNoFailoverDuringPeerSwap(t *testing.T) {
	e, p, b := watchingNotReady(t, detailSwapping)
	for range 4 {
		p.answer(t, "ldap://a", false)
	}
	c := p.next(t, "ldap://a")
	if s := b.a.Status(); len(e.cp.failoverCalls()) != 0 || !strings.Contains(s.Hold, "swap in progress") {
		t.Fatalf("while a swaps: failover calls %v, hold %q; want none, held for the swap", e.cp.failoverCalls(), s.Hold)
	}
	e.clock.Advance(DefaultSwapTimeout + DefaultControlTimeout)
	c.reply <- failResult()
	poll.Until(t, 10*time.Second, "b to fail over once the swap took too long", func() bool { return len(e.cp.failoverCalls()) == 1 })
}

// TestNoFailoverDuringPeerPromote: while the primary's agent reports its
// promote hooks running (its directory server is not started yet), the
// peer's agent does not take the failing probes for a failure; once the
// hooks have taken longer than their timeouts it fails over as usual.
func TestNoFailoverDuringPeerPromote(t *testing.T) {
	e, p, b := watchingNotReady(t, detailPromoting)
	for range 4 {
		p.answer(t, "ldap://a", false)
	}
	c := p.next(t, "ldap://a")
	if s := b.a.Status(); len(e.cp.failoverCalls()) != 0 || !strings.Contains(s.Hold, "promote in progress") {
		t.Fatalf("while a promotes: failover calls %v, hold %q; want none, held for the promotion", e.cp.failoverCalls(), s.Hold)
	}
	e.clock.Advance(b.a.promoteBudget() + DefaultControlTimeout)
	c.reply <- failResult()
	poll.Until(t, 10*time.Second, "b to fail over once the promotion took too long", func() bool { return len(e.cp.failoverCalls()) == 1 })
}

// TestStaleFailuresIgnoredOncePrimaryReady: probes that failed while the
// primary's promote hooks ran (before they started its directory server)
// do not count toward a failover once it reports itself ready; the
// threshold counts failures after that report.
func TestStaleFailuresIgnoredOncePrimaryReady(t *testing.T) {
	e, p, b := watchingNotReady(t, detailPromoting)
	for range 3 {
		p.answer(t, "ldap://a", false)
	}
	b.waitStatus(t, "the hold for a's promotion", func(s Status) bool { return strings.Contains(s.Hold, "promote in progress") })
	e.cp.set(func(*cluster.VolumeState) {
		h := e.cp.host("a")
		h.Ready, h.ReadyDetail, h.ReadySince = true, "serving", e.clock.Now()
	})
	b.waitStatus(t, "no hold once a is ready", func(s Status) bool { return s.Hold == "" })
	for range 2 { // the streak goes on, but only two failures are fresh
		p.answer(t, "ldap://a", false)
	}
	c := p.next(t, "ldap://a")
	if calls := e.cp.failoverCalls(); len(calls) != 0 {
		t.Fatalf("failover %v on failures from before the primary reported ready", calls)
	}
	c.reply <- failResult()
	poll.Until(t, 10*time.Second, "b to fail over on the third fresh failure", func() bool { return len(e.cp.failoverCalls()) == 1 })
}

// watchingNotReady starts b as the secondary watching primary a through a
// step probe, then has a report itself not ready with detail.
func watchingNotReady(t *testing.T, detail string) (*env, *stepProbe, *testHost) {
	t.Helper()
	e := newEnv(t, "a")
	p := &stepProbe{calls: make(chan stepCall)}
	b := e.start("b", p.Check, nil)
	e.waitHooks(0, demoteSeq("b", 1)...)
	b.waitState(t, StateSecondaryWatching)
	e.clock.Advance(testMinSwap)
	e.cp.set(func(*cluster.VolumeState) {
		h := e.cp.host("a")
		h.Ready, h.ReadyDetail, h.ReadySince = false, detail, e.clock.Now()
	})
	return e, p, b
}
