package agent

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/internal/poll"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/ldapagent/probe"
)

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestFailoverAfterThreshold: probe results are handed to the agent one by
// one; failures shorter than the threshold, or interrupted by a success,
// cause nothing, and the threshold-th failure in a row fails over.
func TestFailoverAfterThreshold(t *testing.T) {
	e := newEnv(t, "a")
	p := &stepProbe{calls: make(chan stepCall)}
	b := e.start("b", p.Check, nil)
	// At start, a secondary makes sure its directory server is stopped.
	e.waitHooks(0, demoteSeq("b", 1)...)
	b.waitState(t, StateSecondaryWatching)
	e.clock.Advance(testMinSwap)

	// Intermittent failures, each run shorter than the threshold (3).
	for _, up := range []bool{false, false, true, false, false, true, false, false} {
		p.answer(t, "ldap://a", up)
	}
	c := p.next(t, "ldap://a") // the agent has acted on every answer above
	s := b.a.Status()
	if calls := e.cp.failoverCalls(); len(calls) != 0 || s.State != StateSecondaryWatching || s.Service.ConsecutiveFailures != 2 {
		t.Fatalf("after failures below the threshold: failover calls %v, state %s, %d failures", calls, s.State, s.Service.ConsecutiveFailures)
	}
	if s.Service.Target != "peer" || s.Service.URL != "ldap://a" || s.Service.Probes != 8 {
		t.Fatalf("service health %+v", s.Service)
	}
	c.reply <- failResult()

	// The third failure in a row: failover to b, then b's promotion.
	e.waitHooks(0, promoteSeq("b", 2)...)
	s = b.waitState(t, StatePrimaryServing)
	if calls := e.cp.failoverCalls(); len(calls) != 1 || calls[0] != "a@1" {
		t.Fatalf("failover calls %v, want [a@1]", calls)
	}
	if s.Failovers != 1 || s.LastFailover == nil || s.LastFailover.From != "a" || s.LastFailover.To != "b" ||
		s.LastFailover.Epoch != 2 || !strings.Contains(s.LastFailover.Reason, "failed 3 probes in a row") || s.ServingEpoch != 2 {
		t.Fatalf("status after failover: %+v, last failover %+v", s, s.LastFailover)
	}
	if len(s.LastHooks) != 3 || s.LastHooks[2].Name != "start-slapd" || !s.LastHooks[2].OK() {
		t.Fatalf("last hooks %+v", s.LastHooks)
	}
	// Now primary, it probes its own directory server.
	p.answer(t, "ldap://b", true)
	b.waitStatus(t, "probing the local server", func(s Status) bool { return s.Service.Target == "local" && s.Service.Up })
}

func failResult() probe.Result {
	return probe.Result{At: time.Now(), Err: errors.New("connect: connection refused")}
}

// TestNoFailoverTowardOutdatedHost: with its own disk outdated, the
// secondary does not ask for the role, and says why once per outage.
func TestNoFailoverTowardOutdatedHost(t *testing.T) {
	e := newEnv(t, "a")
	e.cp.setDisk("b", cluster.DiskOutdated)
	p := newAutoProbe()
	b := e.start("b", p.Check, nil)
	b.waitState(t, StateSecondaryWatching)
	e.clock.Advance(testMinSwap)
	p.set("ldap://a", true)
	b.waitStatus(t, "a hold for the outdated disk", func(s Status) bool {
		return strings.Contains(s.Hold, "not failing over: this host's disk is outdated")
	})
	// Many more failed probes: still no failover, and one log line.
	probes := b.a.Status().Service.Probes
	b.waitStatus(t, "more probes", func(s Status) bool { return s.Service.Probes >= probes+20 })
	if calls := e.cp.failoverCalls(); len(calls) != 0 {
		t.Fatalf("failover toward an outdated host: %v", calls)
	}
	if n := strings.Count(b.logs.String(), "not failing over: this host's disk is outdated"); n != 1 {
		t.Fatalf("the reason was logged %d times in one outage, want once:\n%s", n, b.logs.String())
	}
	// Resynced: the same outage now fails over.
	e.cp.setDisk("b", cluster.DiskUpToDate)
	b.waitState(t, StatePrimaryServing)
	if calls := e.cp.failoverCalls(); len(calls) != 1 {
		t.Fatalf("failover calls %v, want one", calls)
	}
}

// TestNoFailoverRightAfterStart: a fresh agent does not act on its first
// view for min_swap_interval, however down the primary looks.
func TestNoFailoverRightAfterStart(t *testing.T) {
	e := newEnv(t, "a")
	p := newAutoProbe()
	p.set("ldap://a", true)
	b := e.start("b", p.Check, nil)
	b.waitStatus(t, "the start hold", func(s Status) bool {
		return strings.Contains(s.Hold, "the agent started less than min_swap_interval")
	})
	e.clock.Advance(testMinSwap - time.Second)
	probes := b.a.Status().Service.Probes
	b.waitStatus(t, "more probes", func(s Status) bool { return s.Service.Probes >= probes+10 })
	if calls := e.cp.failoverCalls(); len(calls) != 0 {
		t.Fatalf("failover %v within min_swap_interval of the start", calls)
	}
	e.clock.Advance(time.Second)
	b.waitState(t, StatePrimaryServing)
}

// TestFlapping: two agents. a's directory server fails, b takes over; then
// b's fails right away: a does not take the role back until
// min_swap_interval has passed since the first change.
func TestFlapping(t *testing.T) {
	e := newEnv(t, "a")
	p := newAutoProbe()
	a := e.start("a", p.Check, nil)
	b := e.start("b", p.Check, nil)
	a.waitState(t, StatePrimaryServing)
	b.waitState(t, StateSecondaryWatching)
	e.clock.Advance(testMinSwap)

	p.set("ldap://a", true) // slapd on a killed
	b.waitState(t, StatePrimaryServing)
	a.waitState(t, StateSecondaryWatching) // a ran its demote hooks
	e.waitHooks(0, demoteSeq("a", 2)...)
	e.waitHooks(0, promoteSeq("b", 2)...)

	// a resynced and its slapd is back; now b's fails.
	e.cp.setDisk("a", cluster.DiskUpToDate)
	p.set("ldap://a", false)
	p.set("ldap://b", true)
	a.waitStatus(t, "the anti-flap hold", func(s Status) bool {
		return strings.Contains(s.Hold, "not failing over: the last role change (epoch 2) was less than min_swap_interval")
	})
	e.clock.Advance(testMinSwap - time.Second)
	probes := a.a.Status().Service.Probes
	a.waitStatus(t, "more probes", func(s Status) bool { return s.Service.Probes >= probes+10 })
	if calls := e.cp.failoverCalls(); len(calls) != 1 {
		t.Fatalf("failover calls %v within min_swap_interval, want only the first", calls)
	}
	if n := strings.Count(a.logs.String(), "not failing over: the last role change"); n != 1 {
		t.Fatalf("anti-flap reason logged %d times, want once", n)
	}

	// The rule allows a second swap once the interval has passed.
	e.clock.Advance(time.Second)
	a.waitState(t, StatePrimaryServing)
	b.waitState(t, StateSecondaryWatching)
	if calls := e.cp.failoverCalls(); len(calls) != 2 || calls[1] != "b@2" {
		t.Fatalf("failover calls %v, want [a@1 b@2]", calls)
	}
	if s := a.a.Status(); s.Failovers != 1 || s.Epoch != 3 {
		t.Fatalf("a: %d failovers, epoch %d", s.Failovers, s.Epoch)
	}
}

// TestPromoteHookFails: a failing start-slapd leaves b primary but failed,
// with the hook's name, exit status and output in status; b asks for no
// further role change, reports itself not ready, and Retry finishes the
// promotion once the cause is fixed.
func TestPromoteHookFails(t *testing.T) {
	e := newEnv(t, "a")
	p := newAutoProbe()
	b := e.start("b", p.Check, nil)
	b.waitState(t, StateSecondaryWatching)
	b.touch(t, "fail-start-slapd", false)
	e.clock.Advance(testMinSwap)
	p.set("ldap://a", true)

	s := b.waitState(t, StateFailed)
	f := s.Failure
	if f == nil || f.Sequence != SeqPromote || f.Hook != "start-slapd" || f.ExitCode != 1 || f.Epoch != 2 ||
		f.Error != "exit status 1" || len(f.Tail) != 1 || f.Tail[0] != "start-slapd: simulated failure" {
		t.Fatalf("failure %+v", f)
	}
	if !strings.Contains(s.Hold, `failed: promote hook "start-slapd"`) || s.Role != cluster.RolePrimary || s.ServingEpoch != 0 {
		t.Fatalf("status %+v", s)
	}
	lines := e.waitHooks(0, seq("b", SeqPromote, 2, cluster.RolePrimary, "/export/b", "attach", "mount")...)
	poll.Until(t, 10*time.Second, "b reported not ready", func() bool {
		r := e.cp.reportsOf("b")
		return len(r) > 0 && strings.HasPrefix(r[len(r)-1], `b false agent failed: promote hook "start-slapd"`)
	})
	if !strings.Contains(b.logs.String(), "FAILED") {
		t.Fatal("the failure is not logged")
	}

	// Failed: b's own service is down too, the time rules allow a change,
	// but nothing is asked of the control plane.
	p.set("ldap://b", true)
	e.clock.Advance(2 * testMinSwap)
	probes := b.a.Status().Service.Probes
	b.waitStatus(t, "more probes", func(s Status) bool { return s.Service.Probes >= probes+10 })
	if calls := e.cp.failoverCalls(); len(calls) != 1 {
		t.Fatalf("failover calls %v from a failed agent", calls)
	}
	if st := e.cp.State(); st.Primary != "b" || st.Epoch != 2 {
		t.Fatalf("control plane changed: %+v", st)
	}
	if _, err := b.a.Swap(ctxFor(t)); !errors.Is(err, ErrPeerNotReady) && !errors.Is(err, cluster.ErrNotUpToDate) {
		t.Fatalf("swap from failed b toward outdated a: %v", err)
	}

	// Fixed: Retry runs the whole promote sequence again.
	b.touch(t, "fail-start-slapd", true)
	p.set("ldap://b", false)
	if err := b.a.Retry(ctxFor(t)); err != nil {
		t.Fatalf("retry: %v", err)
	}
	e.waitHooks(lines, promoteSeq("b", 2)...)
	s = b.waitState(t, StatePrimaryServing)
	if s.Failure != nil || s.ServingEpoch != 2 || s.LastFailure == nil || s.LastFailure.Hook != "start-slapd" {
		t.Fatalf("after retry: %+v", s)
	}
	if err := b.a.Retry(ctxFor(t)); !errors.Is(err, ErrNotFailed) {
		t.Fatalf("retry without a failure: %v, want ErrNotFailed", err)
	}
}

// TestRetryFailsAgain: Retry returns the hook's error when it fails again.
func TestRetryFailsAgain(t *testing.T) {
	e := newEnv(t, "a")
	a := e.start("a", newAutoProbe().Check, nil)
	a.touch(t, "fail-mount", false)
	a.waitState(t, StateFailed)
	err := a.a.Retry(ctxFor(t))
	var he *HookError
	if !errors.As(err, &he) || !errors.Is(err, ErrHookFailed) || he.Result.Name != "mount" {
		t.Fatalf("retry: %v, want mount's HookError", err)
	}
	a.waitState(t, StateFailed)
}

// TestDemoteOnRoleLoss: when the role moves away (an operator's promote),
// the old primary runs its demote hooks in order.
func TestDemoteOnRoleLoss(t *testing.T) {
	e := newEnv(t, "a")
	a := e.start("a", newAutoProbe().Check, nil)
	n := e.waitHooks(0, promoteSeq("a", 1)...)
	a.waitState(t, StatePrimaryServing)
	e.cp.promote("b")
	e.waitHooks(n, demoteSeq("a", 2)...)
	s := a.waitState(t, StateSecondaryWatching)
	if s.ServingEpoch != 0 || s.Role != cluster.RoleSecondary {
		t.Fatalf("status %+v", s)
	}
}

// TestDemoteAfterFailedPromotion: a host whose promotion failed and which
// then loses the role cleans up with its demote hooks and leaves the
// failed state.
func TestDemoteAfterFailedPromotion(t *testing.T) {
	e := newEnv(t, "a")
	a := e.start("a", newAutoProbe().Check, nil)
	a.touch(t, "fail-start-slapd", false)
	a.waitState(t, StateFailed)
	n := len(e.hookLines())
	e.cp.promote("b")
	e.waitHooks(n, demoteSeq("a", 2)...)
	s := a.waitState(t, StateSecondaryWatching)
	if s.Failure != nil {
		t.Fatalf("failure kept after the clean-up: %+v", s.Failure)
	}
}

// TestDemoteHookFails: a failing demote hook is a failure too; Retry runs
// the demote sequence again.
func TestDemoteHookFails(t *testing.T) {
	e := newEnv(t, "a")
	a := e.start("a", newAutoProbe().Check, nil)
	a.waitState(t, StatePrimaryServing)
	a.touch(t, "fail-umount", false)
	e.cp.promote("b")
	s := a.waitState(t, StateFailed)
	if s.Failure.Sequence != SeqDemote || s.Failure.Hook != "umount" {
		t.Fatalf("failure %+v", s.Failure)
	}
	a.touch(t, "fail-umount", true)
	n := len(e.hookLines())
	if err := a.a.Retry(ctxFor(t)); err != nil {
		t.Fatalf("retry: %v", err)
	}
	e.waitHooks(n, demoteSeq("a", 2)...)
	a.waitState(t, StateSecondaryWatching)
}

// TestRoleLostWhilePromoting: the promotion stops before its next hook
// when the role moves, and the host demotes.
func TestRoleLostWhilePromoting(t *testing.T) {
	e := newEnv(t, "a")
	dir := t.TempDir()
	gate, waiting := dir+"/gate", dir+"/waiting"
	a := e.start("a", newAutoProbe().Check, func(c *Config) {
		// mount says it started, then waits until the test opens the gate.
		c.Promote[1].Command = `touch '` + waiting + `'; while [ ! -e '` + gate + `' ]; do sleep 0.01; done; ` + c.Promote[1].Command
	})
	n := e.waitHooks(0, seq("a", SeqPromote, 1, cluster.RolePrimary, "/export/a", "attach")...)
	poll.Until(t, 10*time.Second, "mount to start", func() bool { _, err := os.Stat(waiting); return err == nil })
	e.cp.promote("b")
	poll.Until(t, 10*time.Second, "the agent to see the role move", func() bool { return strings.Contains(a.logs.String(), "the role moved while promoting") })
	appendLine(gate, "")
	n = e.waitHooks(n, seq("a", SeqPromote, 1, cluster.RolePrimary, "/export/a", "mount")...)
	e.waitHooks(n, demoteSeq("a", 2)...)
	a.waitState(t, StateSecondaryWatching)
	for _, l := range e.hookLines() {
		if strings.Contains(l, "start-slapd") {
			t.Fatalf("start-slapd ran after the role moved: %q", e.hookLines())
		}
	}
}

// TestReadyCheckGatesFailover: a secondary whose own ready check fails
// does not ask for the role; it does once the check passes.
func TestReadyCheckGatesFailover(t *testing.T) {
	e := newEnv(t, "a")
	p := newAutoProbe()
	b := e.start("b", p.Check, nil)
	b.touch(t, "not-ready", false)
	poll.Until(t, 10*time.Second, "b to report not ready", func() bool {
		h, _ := e.cp.State().Host("b")
		return !h.ReadySince.IsZero() && !h.Ready && strings.Contains(h.ReadyDetail, "slaptest: config broken")
	})
	e.clock.Advance(testMinSwap)
	p.set("ldap://a", true)
	b.waitStatus(t, "the ready check hold", func(s Status) bool {
		return strings.Contains(s.Hold, "not failing over: this host's ready_check failed: exit status 1: slaptest: config broken")
	})
	if st := e.cp.State(); st.Primary != "a" {
		t.Fatalf("failover despite a failing ready check: %+v", st)
	}
	b.touch(t, "not-ready", true)
	b.waitState(t, StatePrimaryServing)
}

// TestReadinessReportedOnChange: readiness goes to the control plane when
// it changes, not at every check.
func TestReadinessReportedOnChange(t *testing.T) {
	e := newEnv(t, "a")
	b := e.start("b", newAutoProbe().Check, nil)
	poll.Until(t, 10*time.Second, "the first report", func() bool { return len(e.cp.reportsOf("b")) >= 2 })
	b.waitStatus(t, "ready reported", func(s Status) bool { return s.Ready && s.ReadyReported })
	// At start: not ready while demoting, then the check's verdict.
	want := []string{"b false demote in progress", "b true ready_check passed"}
	if got := e.cp.reportsOf("b"); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("reports %q, want %q", got, want)
	}
	for range 3 { // the check runs again, with the same verdict
		at := b.a.Status().LastReadyCheck.Started
		e.clock.Advance(testReadyInterval)
		b.waitStatus(t, "another ready check", func(s Status) bool { return s.LastReadyCheck.Started.After(at) })
	}
	b.touch(t, "not-ready", false)
	e.clock.Advance(testReadyInterval)
	b.waitStatus(t, "not ready reported", func(s Status) bool { return !s.Ready && s.ReadyReported })
	want = append(want, "b false ready_check failed: exit status 1: slaptest: config broken")
	if got := e.cp.reportsOf("b"); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("reports %q, want %q", got, want)
	}
}

// TestPrimaryReadinessFollowsLocalProbe: a serving primary reports itself
// not ready when its own directory server is down.
func TestPrimaryReadinessFollowsLocalProbe(t *testing.T) {
	e := newEnv(t, "a")
	p := newAutoProbe()
	a := e.start("a", p.Check, nil)
	a.waitStatus(t, "serving and ready", func(s Status) bool { return s.Ready && s.ReadyReported && s.ReadyDetail == "serving" })
	p.set("ldap://a", true)
	poll.Until(t, 10*time.Second, "a reported down", func() bool {
		h, _ := e.cp.State().Host("a")
		return !h.Ready && strings.HasPrefix(h.ReadyDetail, "serving, but the local directory server is down")
	})
	p.set("ldap://a", false)
	poll.Until(t, 10*time.Second, "a reported ready again", func() bool { h, _ := e.cp.State().Host("a"); return h.Ready })
}

// TestVolumeNotWritable: an AwaitPrimary error fails the promotion before
// any hook.
func TestVolumeNotWritable(t *testing.T) {
	e := newEnv(t, "a")
	vol := &fakeVolume{cp: e.cp, node: "a", awaitErr: errors.New("fuse mount failed")}
	a, err := New(e.config("a"), Deps{NodeID: "a", ControlPlane: e.cp, Volume: vol, Check: newAutoProbe().Check, Now: e.clock.Now, Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	h := &testHost{id: "a", a: a}
	s := h.waitState(t, StateFailed)
	if s.Failure.Hook != "await-volume" || !strings.Contains(s.Failure.Error, "fuse mount failed") {
		t.Fatalf("failure %+v", s.Failure)
	}
	if len(e.hookLines()) != 0 {
		t.Fatalf("hooks ran: %q", e.hookLines())
	}
	// The role moves away: nothing ran here, so nothing to clean up.
	e.cp.promote("b")
	s = h.waitState(t, StateSecondaryWatching)
	if s.Failure != nil || s.LastFailure == nil || s.LastFailure.Hook != "await-volume" {
		t.Fatalf("after the role moved: failure %+v, last %+v", s.Failure, s.LastFailure)
	}
}

// TestFailoverWithoutQuorum: a failover the control plane cannot commit is
// retried at the next probe result, and succeeds once it can.
func TestFailoverWithoutQuorum(t *testing.T) {
	e := newEnv(t, "a")
	e.cp.failoverErr = cluster.ErrNoQuorum
	p := &stepProbe{calls: make(chan stepCall)}
	b := e.start("b", p.Check, func(c *Config) { c.ReadyCheck = nil })
	b.waitState(t, StateSecondaryWatching)
	e.clock.Advance(testMinSwap)
	for range 3 {
		p.answer(t, "ldap://a", false)
	}
	poll.Until(t, 10*time.Second, "the first attempt", func() bool { return len(e.cp.failoverCalls()) == 1 })
	s := b.waitStatus(t, "the refusal", func(s Status) bool { return s.State == StateSecondaryWatching && s.LastFailover != nil })
	if !strings.Contains(s.Hold, "not failing over: the control plane refused the failover: no quorum") || s.Failovers != 0 ||
		!strings.Contains(s.LastFailover.Error, "no quorum") {
		t.Fatalf("status %+v, last failover %+v", s, s.LastFailover)
	}
	if calls := e.cp.failoverCalls(); len(calls) != 1 {
		t.Fatalf("retried before the next probe: %v", calls)
	}
	e.cp.mu.Lock()
	e.cp.failoverErr = nil
	e.cp.mu.Unlock()
	p.answer(t, "ldap://a", false)
	b.waitState(t, StatePrimaryServing)
	if calls := e.cp.failoverCalls(); len(calls) != 2 {
		t.Fatalf("failover calls %v, want 2", calls)
	}
}

// TestStatusOutput: the status encodes as JSON with its documented keys
// and prints for an operator.
func TestStatusOutput(t *testing.T) {
	e := newEnv(t, "a")
	a := e.start("a", newAutoProbe().Check, nil)
	a.touch(t, "fail-start-slapd", false)
	s := a.waitState(t, StateFailed)
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"state":"failed"`, `"role":"primary"`, `"epoch":1`, `"service":{"target":"local"`,
		`"failure":{`, `"hook":"start-slapd"`, `"exit_code":1`, `"last_hooks":[`, `"min_swap_interval_ms":60000`} {
		if !strings.Contains(string(b), key) {
			t.Fatalf("status JSON lacks %s: %s", key, b)
		}
	}
}

// TestCloseKillsRunningHook: Close returns promptly with a hook running,
// and that hook's processes are gone.
func TestCloseKillsRunningHook(t *testing.T) {
	e := newEnv(t, "a")
	pidFile := t.TempDir() + "/pid"
	a := e.start("a", newAutoProbe().Check, func(c *Config) {
		c.Promote[0].Command = `sleep 60 & echo $! > '` + pidFile + `'; wait`
		c.Promote[0].Timeout = time.Minute
	})
	poll.Until(t, 10*time.Second, "the hook to start its child", func() bool { return readPid(pidFile) > 0 })
	start := time.Now()
	a.a.Close()
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Close took %v with a hook running", d)
	}
	waitGone(t, readPid(pidFile))
	if s := a.a.Status(); s.State != StateStopped {
		t.Fatalf("state after Close: %s", s.State)
	}
	if _, err := a.a.Swap(ctxFor(t)); !errors.Is(err, ErrClosed) {
		t.Fatalf("swap after close: %v", err)
	}
}

func TestNewRefusesBadInput(t *testing.T) {
	e := newEnv(t, "a")
	vol := &fakeVolume{cp: e.cp, node: "a"}
	for _, tc := range []struct {
		name string
		cfg  Config
		d    Deps
		want string
	}{
		{"bad config", Config{}, Deps{NodeID: "a", ControlPlane: e.cp, Volume: vol}, "peer_url: required"},
		{"no node", e.config("a"), Deps{ControlPlane: e.cp, Volume: vol}, "no node id"},
		{"no control plane", e.config("a"), Deps{NodeID: "a", Volume: vol}, "no control plane"},
		{"no volume", e.config("a"), Deps{NodeID: "a", ControlPlane: e.cp}, "no volume"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := New(tc.cfg, tc.d)
			if err == nil {
				a.Close()
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
		})
	}
}
