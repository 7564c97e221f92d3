package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/ldapagent/probe"
)

// ControlPlane is what the agent needs of the raft control plane;
// *cluster.Cluster satisfies it.
type ControlPlane interface {
	// State is this member's copy of the volume state.
	State() cluster.VolumeState
	// Watch delivers the newest state, coalesced, until ctx ends.
	Watch(ctx context.Context) <-chan cluster.VolumeState
	// Failover moves the primary role away from failed, primary of epoch,
	// to the uptodate data host (under quorum).
	Failover(ctx context.Context, failed string, epoch cluster.Epoch) (string, cluster.Epoch, error)
	// ReportReady records this host's readiness for status and for the
	// peer's agent.
	ReportReady(ctx context.Context, node string, ready bool, detail string) error
}

// Volume is the local ldmirror node the agent drives.
type Volume interface {
	// AwaitPrimary blocks until this host writes as primary in epoch e
	// with its FUSE export mounted, and returns the export file's path.
	AwaitPrimary(ctx context.Context, e cluster.Epoch) (export string, err error)
	// Swap hands the primary role to the peer with no lost write (waits
	// for writes in flight, flushes both hosts, transfers the role in the
	// control plane) and returns the new epoch. Only valid on the primary,
	// after the directory service was stopped.
	Swap(ctx context.Context) (cluster.Epoch, error)
}

// CheckFunc runs one probe of a directory server: probe.Check, or a
// scripted stand-in in tests.
type CheckFunc func(ctx context.Context, cfg probe.Config) probe.Result

// Deps is what an Agent runs against.
type Deps struct {
	// NodeID is this host's ID in the control plane. Required.
	NodeID string
	// Dir is the volume directory, passed to hooks as LDMIRROR_DIR.
	Dir string
	// Export is the path of the volume's FUSE export file
	// (<dir>/export/volume), passed to hooks as LDMIRROR_EXPORT until
	// Volume.AwaitPrimary returns one: the demote hooks at start, and
	// after a restart, need it before any promotion.
	Export string
	// ControlPlane and Volume are required.
	ControlPlane ControlPlane
	Volume       Volume
	// Logger receives decisions, hook output and failures; default
	// slog.Default().
	Logger *slog.Logger
	// Check runs one probe; default probe.Check.
	Check CheckFunc
	// Now is the clock of the anti-flap and failback timers; default
	// time.Now.
	Now func() time.Time
}

// Roles, as LDMIRROR_ROLE and Status.Role give them.
const (
	RolePrimary   = "primary"
	RoleSecondary = "secondary"
)

// Errors callers act on.
var (
	// ErrHookFailed is wrapped by a *HookError.
	ErrHookFailed = errors.New("hook failed")
	// ErrNotFailed: Retry was called but the agent has not failed.
	ErrNotFailed = errors.New("the agent has not failed: nothing to retry")
	// ErrBusy: a sequence (promote, demote, failover, swap) is running.
	ErrBusy = errors.New("the agent is busy")
	// ErrNotPrimary: Swap was called on a host the control plane does not
	// name primary.
	ErrNotPrimary = errors.New("this host is not the primary")
	// ErrPeerNotReady: Swap was refused because the peer does not report
	// itself ready (or there is no peer).
	ErrPeerNotReady = errors.New("the peer is not ready")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("agent is closed")
)

// Task kinds besides SeqPromote and SeqDemote.
const (
	taskFailover = "failover"
	taskSwap     = "swap"
)

// Probe targets.
const (
	targetPeer  = "peer"
	targetLocal = "local"
)

type svcState int

const (
	svcUnknown svcState = iota // at start: whatever a previous daemon left running
	svcDown                    // the demote hooks completed
	svcPartial                 // a sequence stopped part way (failure or role loss)
	svcUp                      // the promote hooks completed in svcEpoch
)

// task is the one sequence running at a time.
type task struct {
	kind  string
	epoch cluster.Epoch // promote, swap: the epoch this host holds the role in
	// roleLost is set by the loop when the control plane stops naming this
	// host primary in epoch; a promote sequence stops before its next
	// hook, and cancelAwait ends a wait for the volume.
	roleLost    atomic.Bool
	cancelAwait context.CancelFunc
	waiters     []chan taskResult
}

type taskResult struct {
	epoch cluster.Epoch
	err   error
}

type event struct {
	fn   func()
	done chan struct{}
}

type readiness struct {
	ready  bool
	detail string
}

// detailSwapping is the readiness detail of a primary whose agent runs a
// swap: its peer's agent does not fail over meanwhile.
const detailSwapping = taskSwap + " in progress"

type target struct {
	gen  uint64
	kind string
	cfg  probe.Config
}

// Agent watches the directory service of a mirrored volume and drives the
// role changes of its host through the control plane. Its methods are safe
// for concurrent use.
type Agent struct {
	cfg           Config
	node          string
	dir           string
	defaultExport string // Deps.Export
	cp            ControlPlane
	vol           Volume
	log           *slog.Logger
	check         CheckFunc
	now           func() time.Time
	base          probe.Config // probe settings without the URL

	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	events    chan event
	closeOnce sync.Once

	targetMu sync.Mutex
	target   target // what the prober probes; written by the loop

	mu     sync.Mutex
	status Status // published by the loop after every event

	// Everything below is owned by the loop goroutine.
	st          cluster.VolumeState
	haveState   bool
	state       string
	stateSince  time.Time
	task        *task
	svc         svcState
	svcEpoch    cluster.Epoch
	export      string
	failure     *Failure
	lastFailure *Failure
	started     time.Time
	lastChange  time.Time     // last role change seen (or the start)
	expectEpoch cluster.Epoch // an epoch this agent obtained that the local state has not shown yet
	hold        string

	gen        uint64 // of the probe target
	targetKind string
	health     probe.Health

	episode     bool   // the primary's service is down
	loggedHold  string // the reason not to fail over last logged in this episode
	lastAttempt uint64 // health.Probes at the last failover attempt
	attemptHold string // why the last attempt did not succeed

	readyCheck     *HookResult
	readyCheckAt   time.Time
	readyChecking  bool
	ready          readiness
	readyKnown     bool
	reported       *readiness
	reporting      bool
	reportFailedAt time.Time
	reportErrShown bool

	peerGoodSince time.Time // preferred host uptodate and ready since (failback)
	failovers     uint64
	swaps         uint64
	lastFailover  *RoleChange
	lastSwap      *RoleChange
	lastHooks     []HookResult
}

// New checks cfg and starts an agent for host d.NodeID: it follows the
// control plane's state from now on. Close stops it.
func New(cfg Config, d Deps) (*Agent, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	switch {
	case d.NodeID == "":
		return nil, errors.New("agent: no node id")
	case d.ControlPlane == nil:
		return nil, errors.New("agent: no control plane")
	case d.Volume == nil:
		return nil, errors.New("agent: no volume")
	}
	if d.Logger == nil {
		d.Logger = slog.Default()
	}
	if d.Check == nil {
		d.Check = probe.Check
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	a := &Agent{
		cfg: cfg, node: d.NodeID, dir: d.Dir, defaultExport: d.Export, cp: d.ControlPlane, vol: d.Volume,
		log: d.Logger.With("component", "agent"), check: d.Check, now: d.Now,
		base: probe.Config{
			BindDN: cfg.BindDN, Password: cfg.Password, ReadDN: cfg.ReadDN,
			CanaryDN: cfg.CanaryDN, CanaryAttr: cfg.CanaryAttr,
			Timeout: cfg.Timeout, Interval: cfg.Interval, Threshold: cfg.Threshold,
		},
		events: make(chan event),
	}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	a.started = a.now()
	a.lastChange = a.started
	a.setState(StateStarting)
	if len(cfg.Promote) == 0 {
		a.log.Warn("agent: no promote hooks: becoming primary starts nothing")
	}
	a.publish()
	watch := a.cp.Watch(a.ctx)
	a.wg.Add(2)
	go a.run(watch)
	go a.probeLoop()
	return a, nil
}

// Close stops the agent and waits for its goroutines; a hook still
// running is killed. It does not stop the directory server.
func (a *Agent) Close() error {
	a.closeOnce.Do(func() {
		a.cancel()
		a.wg.Wait()
		a.mu.Lock()
		a.status.State = StateStopped
		a.status.StateSince = a.now()
		a.mu.Unlock()
	})
	return nil
}

// Status returns the agent's current state.
func (a *Agent) Status() Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.status
	s.LastHooks = slices.Clone(s.LastHooks)
	if s.LastReadyCheck != nil {
		r := *s.LastReadyCheck
		s.LastReadyCheck = &r
	}
	if s.LastFailover != nil {
		c := *s.LastFailover
		s.LastFailover = &c
	}
	if s.LastSwap != nil {
		c := *s.LastSwap
		s.LastSwap = &c
	}
	for _, p := range []**Failure{&s.Failure, &s.LastFailure} {
		if *p != nil {
			f := **p
			f.Tail = slices.Clone(f.Tail)
			*p = &f
		}
	}
	return s
}

// Retry clears a failure and runs again the sequence the current role
// calls for: the promote hooks if this host is primary, the demote hooks
// if not. It returns when that sequence ends, with its error. It returns
// ErrNotFailed if the agent has not failed. If ctx ends first, Retry
// returns its error and the sequence goes on.
func (a *Agent) Retry(ctx context.Context) error {
	r, err := a.request(ctx, func() (*task, error) {
		if a.failure == nil {
			return nil, ErrNotFailed
		}
		if a.task != nil {
			return nil, fmt.Errorf("%w: %s in progress", ErrBusy, a.task.kind)
		}
		f := a.failure
		a.failure = nil
		a.log.Info("agent: retrying after a failure", "sequence", f.Sequence, "hook", f.Hook)
		a.reconcile()
		return a.task, nil
	})
	if err != nil {
		return err
	}
	return r.err
}

// Swap is the orderly role exchange (`ldmirror swap`): it runs the demote
// hooks, then Volume.Swap; if that fails and this host still holds the
// role, it runs the promote hooks again to restore the service. It needs
// this host to be primary and the peer uptodate and ready; the anti-flap
// rule does not apply to an operator's swap. It returns the new epoch
// when the swap is done.
func (a *Agent) Swap(ctx context.Context) (cluster.Epoch, error) {
	r, err := a.request(ctx, func() (*task, error) {
		if a.task != nil {
			return nil, fmt.Errorf("%w: %s in progress", ErrBusy, a.task.kind)
		}
		// The member's own state, which the watched copy may trail.
		st := a.cp.State()
		if !a.haveState || st.Primary != a.node || a.st.Primary != a.node {
			return nil, fmt.Errorf("%w: the control plane names %q primary in epoch %d", ErrNotPrimary, st.Primary, st.Epoch)
		}
		if err := peerAccepts(st, a.node); err != nil {
			return nil, err
		}
		return a.startSwap("operator swap", false), nil
	})
	if err != nil {
		return 0, err
	}
	return r.epoch, r.err
}

// request runs fn in the loop; if it starts a task, it waits for the task.
func (a *Agent) request(ctx context.Context, fn func() (*task, error)) (taskResult, error) {
	var wait chan taskResult
	var ferr error
	ev := event{done: make(chan struct{}), fn: func() {
		t, err := fn()
		ferr = err
		if err == nil && t != nil {
			wait = make(chan taskResult, 1)
			t.waiters = append(t.waiters, wait)
		}
	}}
	select {
	case a.events <- ev:
	case <-ctx.Done():
		return taskResult{}, ctx.Err()
	case <-a.ctx.Done():
		return taskResult{}, ErrClosed
	}
	select {
	case <-ev.done:
	case <-a.ctx.Done():
		return taskResult{}, ErrClosed
	}
	if ferr != nil || wait == nil {
		return taskResult{}, ferr
	}
	select {
	case r := <-wait:
		return r, nil
	case <-ctx.Done():
		return taskResult{}, fmt.Errorf("%w (the sequence goes on: see status)", ctx.Err())
	case <-a.ctx.Done():
		return taskResult{}, ErrClosed
	}
}

// send runs fn in the loop and waits until the loop has acted on it. It
// returns false if the agent closed first.
func (a *Agent) send(fn func()) bool {
	ev := event{fn: fn, done: make(chan struct{})}
	select {
	case a.events <- ev:
	case <-a.ctx.Done():
		return false
	}
	select {
	case <-ev.done:
		return true
	case <-a.ctx.Done():
		return false
	}
}

// spawn runs fn in a goroutine that Close waits for. Only the loop (and
// New) call it, so the group is never empty when it does.
func (a *Agent) spawn(fn func()) {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		fn()
	}()
}

// run is the loop: the only goroutine that changes the agent's state. It
// takes one event at a time — a control-plane state, a probe result, the
// end of a task, an operator request, a tick — then decides what to do.
func (a *Agent) run(watch <-chan cluster.VolumeState) {
	defer a.wg.Done()
	tick := time.NewTicker(a.cfg.Interval)
	defer tick.Stop()
	for {
		var done chan struct{}
		select {
		case <-a.ctx.Done():
			return
		case st, ok := <-watch:
			if !ok {
				watch = nil
				if a.ctx.Err() == nil {
					a.log.Error("agent: the control plane closed its watch; the agent no longer sees role changes")
				}
				continue
			}
			a.onState(st)
		case ev := <-a.events:
			ev.fn()
			done = ev.done
		case <-tick.C:
		}
		a.reconcile()
		a.publish()
		if done != nil {
			close(done)
		}
	}
}

func (a *Agent) setState(s string) {
	if s == a.state {
		return
	}
	a.log.Info("agent: state "+s, "previous", a.state, "epoch", a.st.Epoch, "primary", a.st.Primary)
	a.state, a.stateSince = s, a.now()
}

func (a *Agent) onState(st cluster.VolumeState) {
	prev, had := a.st, a.haveState
	a.st, a.haveState = st, true
	if had && st.Epoch != prev.Epoch {
		a.lastChange = a.now()
		a.peerGoodSince = time.Time{}
		a.log.Info("agent: role change seen", "epoch", st.Epoch, "primary", st.Primary, "previous_primary", prev.Primary)
	}
	if t := a.task; t != nil && t.cancelAwait != nil && !st.Holds(a.node, t.epoch) && !t.roleLost.Load() {
		t.roleLost.Store(true)
		if t.kind == SeqPromote {
			a.log.Warn("agent: the role moved while promoting; stopping before the next hook", "epoch", t.epoch, "primary", st.Primary)
		}
		t.cancelAwait()
	}
}

// reconcile compares what the control plane says with what runs here and
// starts the sequence that closes the gap, if any and if none is running.
func (a *Agent) reconcile() {
	if !a.haveState || a.ctx.Err() != nil {
		return
	}
	a.hold = ""
	a.updateTarget()
	defer a.maybeReport()
	if a.task != nil {
		return
	}
	st := a.st
	primary := st.Primary == a.node
	if a.failure != nil && !primary && a.failure.Sequence == SeqPromote {
		// The role moved away from a host whose promotion failed: clean up
		// what the promotion started, if anything.
		if a.svc != svcDown {
			a.startDemote("this host lost the primary role after a failed promotion")
			return
		}
		a.log.Info("agent: the role moved away after a failed promotion that started nothing; the failure is cleared", "hook", a.failure.Hook)
		a.failure = nil
	}
	if a.failure != nil {
		a.setState(StateFailed)
		a.hold = fmt.Sprintf("failed: %s hook %q: %s; no role change until the cause is fixed and the agent retried", a.failure.Sequence, a.failure.Hook, a.failure.Error)
		return
	}
	if a.expectEpoch > st.Epoch {
		a.hold = fmt.Sprintf("waiting for this member to apply epoch %d", a.expectEpoch)
		return
	}
	if primary {
		switch {
		case a.svc == svcUp && a.svcEpoch == st.Epoch:
			a.setState(StatePrimaryServing)
			a.evaluateFailback()
		case (a.svc == svcUp || a.svc == svcPartial) && a.svcEpoch != st.Epoch:
			a.startDemote(fmt.Sprintf("primary again in the new epoch %d: restarting the service", st.Epoch))
		default:
			a.startPromote(st.Epoch)
		}
		return
	}
	if a.svc != svcDown {
		reason := "this host lost the primary role"
		if a.svc == svcUnknown {
			reason = "this host is secondary at start: making sure the directory server is stopped"
		}
		a.startDemote(reason)
		return
	}
	a.setState(StateSecondaryWatching)
	a.evaluateFailover()
	if a.task == nil {
		a.maybeReadyCheck()
	}
}

// evaluateFailover decides, on a secondary, whether to ask for the role.
func (a *Agent) evaluateFailover() {
	st, h := a.st, a.health
	down := a.targetKind == targetPeer && h.ConsecutiveFailures >= a.cfg.Threshold
	if !down {
		if a.episode {
			a.log.Info("agent: the primary's directory server answers again", "primary", st.Primary)
		}
		a.episode, a.loggedHold, a.attemptHold = false, "", ""
		return
	}
	a.episode = true
	reason := a.failoverHold()
	if reason == "" && h.Probes <= a.lastAttempt {
		reason = a.attemptHold // retried at the next probe result
	}
	if reason != "" {
		a.hold = "not failing over: " + reason
		if reason != a.loggedHold {
			a.log.Warn("agent: not failing over: "+reason, "primary", st.Primary, "epoch", st.Epoch,
				"failures", h.ConsecutiveFailures, "last_error", h.LastError)
			a.loggedHold = reason
		}
		return
	}
	if h.Probes <= a.lastAttempt {
		return
	}
	a.lastAttempt = h.Probes
	a.attemptHold = ""
	a.startFailover(st.Primary, st.Epoch, fmt.Sprintf("%s's directory server failed %d probes in a row: %s",
		st.Primary, h.ConsecutiveFailures, h.LastError))
}

// failoverHold is why this host may not take the role now, or "".
func (a *Agent) failoverHold() string {
	st := a.st
	self, ok := st.Host(a.node)
	now := a.now()
	msi := a.cfg.MinSwapInterval
	switch {
	case !ok:
		return "this host is not registered with the control plane"
	case st.Primary == "":
		return "the control plane names no primary (an operator demoted it): promote a host explicitly"
	case self.Disk != cluster.DiskUpToDate:
		return fmt.Sprintf("this host's disk is %s (since epoch %d); it must resync first", self.Disk, self.DiskEpoch)
	case now.Sub(a.started) < msi:
		return fmt.Sprintf("the agent started less than min_swap_interval (%v) ago", msi)
	case now.Sub(a.lastChange) < msi:
		return fmt.Sprintf("the last role change (epoch %d) was less than min_swap_interval (%v) ago", st.Epoch, msi)
	}
	if p, ok := st.Host(st.Primary); ok && !p.Ready && p.ReadyDetail == detailSwapping {
		// Its directory server is down because it hands the role over; a
		// swap that takes longer than swap_timeout (plus the probes that
		// notice) has failed, and the failover goes on.
		if since := now.Sub(p.ReadySince); since < a.cfg.SwapTimeout+a.cfg.ControlTimeout {
			return fmt.Sprintf("%s is handing the role over (swap in progress for %v)", st.Primary, since.Round(time.Second))
		}
	}
	return ""
}

// evaluateFailback decides, on a serving primary, whether to hand the
// service back to the preferred host.
func (a *Agent) evaluateFailback() {
	pref := a.cfg.Preferred
	if a.cfg.Failback != FailbackAuto || pref == "" || pref == a.node {
		return
	}
	h, ok := a.st.Host(pref)
	var reason string
	switch {
	case !ok || h.Witness:
		reason = fmt.Sprintf("the preferred host %q is not a data host of the control plane", pref)
	case h.Disk != cluster.DiskUpToDate:
		reason = fmt.Sprintf("%s is %s", pref, h.Disk)
	case !h.Ready:
		reason = fmt.Sprintf("%s is not ready: %s", pref, readyDetail(h))
	}
	if reason != "" {
		a.peerGoodSince = time.Time{}
		a.setHold("not failing back: " + reason)
		return
	}
	now := a.now()
	if a.peerGoodSince.IsZero() {
		a.peerGoodSince = now
		a.log.Info("agent: the preferred host is uptodate and ready; failing back after failback_after", "preferred", pref, "failback_after", a.cfg.FailbackAfter)
	}
	switch {
	case now.Sub(a.peerGoodSince) < a.cfg.FailbackAfter:
		a.setHold(fmt.Sprintf("failing back to %s once it has been uptodate and ready for failback_after (%v)", pref, a.cfg.FailbackAfter))
	case now.Sub(a.lastChange) < a.cfg.MinSwapInterval:
		a.setHold(fmt.Sprintf("failing back to %s once min_swap_interval (%v) has passed since the last role change", pref, a.cfg.MinSwapInterval))
	default:
		a.startSwap(fmt.Sprintf("automatic failback to the preferred host %s", pref), true)
	}
}

// setHold sets the hold and logs it when it changes.
func (a *Agent) setHold(s string) {
	a.hold = s
	if s != a.loggedHold {
		a.log.Info("agent: " + s)
		a.loggedHold = s
	}
}

func readyDetail(h cluster.HostState) string {
	switch {
	case h.ReadySince.IsZero():
		return "it has not reported readiness (is its agent running?)"
	case h.ReadyDetail == "":
		return "no detail"
	}
	return h.ReadyDetail
}

// peerID is the other data host's ID, or "".
func (a *Agent) peerID() string {
	for _, id := range a.st.DataHosts() {
		if id != a.node {
			return id
		}
	}
	return ""
}

// peerAccepts checks that the peer of node may receive the role by a swap.
func peerAccepts(st cluster.VolumeState, node string) error {
	peer := ""
	for _, id := range st.DataHosts() {
		if id != node {
			peer = id
		}
	}
	if peer == "" {
		return fmt.Errorf("%w: the control plane knows no other data host", ErrPeerNotReady)
	}
	h, _ := st.Host(peer)
	if h.Disk != cluster.DiskUpToDate {
		return fmt.Errorf("swap to %s: %w: %s is %s", peer, cluster.ErrNotUpToDate, peer, h.Disk)
	}
	if !h.Ready {
		return fmt.Errorf("swap to %s: %w: %s", peer, ErrPeerNotReady, readyDetail(h))
	}
	return nil
}

// updateTarget points the prober at the peer's directory server while
// this host is secondary and at its own while primary.
func (a *Agent) updateTarget() {
	kind, url := targetPeer, a.cfg.PeerURL
	if a.st.Primary == a.node {
		kind, url = targetLocal, a.cfg.LocalURL
	}
	if kind == a.targetKind {
		return
	}
	a.targetKind = kind
	a.gen++
	a.health = probe.Health{}
	a.episode, a.loggedHold, a.attemptHold, a.lastAttempt = false, "", "", 0
	cfg := a.base
	cfg.URL = url
	a.targetMu.Lock()
	a.target = target{gen: a.gen, kind: kind, cfg: cfg}
	a.targetMu.Unlock()
}

// probeLoop probes the current target every Interval. The loop acts on a
// result before the next probe starts.
func (a *Agent) probeLoop() {
	defer a.wg.Done()
	tick := time.NewTicker(a.cfg.Interval)
	defer tick.Stop()
	for {
		a.targetMu.Lock()
		tg := a.target
		a.targetMu.Unlock()
		if tg.cfg.URL != "" {
			res := a.check(a.ctx, tg.cfg)
			if a.ctx.Err() != nil || !a.send(func() { a.onProbe(tg, res) }) {
				return
			}
		}
		select {
		case <-a.ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// onProbe folds one result into the health, with probe.Monitor's rule:
// down after Threshold failures in a row, up after one success.
func (a *Agent) onProbe(tg target, r probe.Result) {
	if tg.gen != a.gen {
		return // the target changed while it ran
	}
	h := &a.health
	wasDown := h.Known && h.ConsecutiveFailures >= a.cfg.Threshold
	wasUp := h.Up
	h.Record(r, a.cfg.Threshold)
	isDown := h.ConsecutiveFailures >= a.cfg.Threshold
	switch {
	case isDown && !wasDown:
		a.log.Warn("agent: directory server down", "target", tg.kind, "url", tg.cfg.URL, "failures", h.ConsecutiveFailures, "err", h.LastError)
	case h.Up && !wasUp:
		a.log.Info("agent: directory server up", "target", tg.kind, "url", tg.cfg.URL, "latency", r.Latency)
	}
}

// maybeReadyCheck runs the ready check every ReadyInterval on a secondary.
func (a *Agent) maybeReadyCheck() {
	rc := a.cfg.ReadyCheck
	if rc == nil || a.readyChecking || (!a.readyCheckAt.IsZero() && a.now().Sub(a.readyCheckAt) < a.cfg.ReadyInterval) {
		return
	}
	a.readyChecking = true
	a.readyCheckAt = a.now()
	env := a.env(a.st.Epoch, RoleSecondary)
	a.spawn(func() {
		r := runHook(a.ctx, a.log, SeqReadyCheck, *rc, env)
		a.send(func() {
			a.readyChecking = false
			a.noteReadyCheck(r)
		})
	})
}

func (a *Agent) noteReadyCheck(r HookResult) {
	a.readyCheck = &r
}

// readiness is this host's readiness as reported to the control plane;
// known is false until there is something to report.
func (a *Agent) readiness() (r readiness, known bool) {
	switch {
	case a.failure != nil:
		return readiness{false, fmt.Sprintf("agent failed: %s hook %q: %s", a.failure.Sequence, a.failure.Hook, a.failure.Error)}, true
	case a.task != nil && a.task.kind == taskSwap:
		return readiness{false, detailSwapping}, true
	case a.task != nil && a.task.kind != taskFailover:
		return readiness{false, a.task.kind + " in progress"}, true
	case a.st.Primary == a.node:
		if a.svc != svcUp || a.svcEpoch != a.st.Epoch {
			return readiness{false, "primary, not serving yet"}, true
		}
		if a.cfg.LocalURL != "" && a.targetKind == targetLocal && a.health.ConsecutiveFailures >= a.cfg.Threshold {
			return readiness{false, "serving, but the local directory server is down: " + a.health.LastError}, true
		}
		return readiness{true, "serving"}, true
	case a.svc != svcDown:
		return readiness{}, false
	case a.cfg.ReadyCheck == nil:
		return readiness{true, "secondary; no ready_check configured"}, true
	case a.readyCheck == nil:
		return readiness{}, false
	case a.readyCheck.OK():
		return readiness{true, "ready_check passed"}, true
	}
	return readiness{false, "ready_check failed: " + hookSummary(*a.readyCheck)}, true
}

func hookSummary(r HookResult) string {
	s := r.Error
	if n := len(r.Tail); n > 0 {
		s += ": " + r.Tail[n-1]
	}
	return s
}

// maybeReport sends this host's readiness to the control plane when it
// changed since the last report that committed.
func (a *Agent) maybeReport() {
	want, known := a.readiness()
	if known {
		a.ready, a.readyKnown = want, true
	}
	if !known || a.reporting || (a.reported != nil && *a.reported == want) {
		return
	}
	if !a.reportFailedAt.IsZero() && time.Since(a.reportFailedAt) < a.cfg.Interval {
		return
	}
	a.reporting = true
	a.spawn(func() {
		ctx, cancel := context.WithTimeout(a.ctx, a.cfg.ControlTimeout)
		err := a.cp.ReportReady(ctx, a.node, want.ready, want.detail)
		cancel()
		a.send(func() {
			a.reporting = false
			if err != nil {
				a.reportFailedAt = time.Now()
				if !a.reportErrShown {
					a.log.Warn("agent: could not report readiness to the control plane; retrying", "ready", want.ready, "err", err)
					a.reportErrShown = true
				}
				return
			}
			a.reportFailedAt, a.reportErrShown = time.Time{}, false
			a.reported = &want
			a.log.Info("agent: readiness reported", "ready", want.ready, "detail", want.detail)
		})
	})
}

// publish copies the loop's state into the Status that Status returns.
func (a *Agent) publish() {
	st := a.st
	s := Status{
		Node: a.node, State: a.state, StateSince: a.stateSince,
		Primary: st.Primary, Epoch: st.Epoch, Hold: a.hold,
		Ready: a.ready.ready, ReadyDetail: a.ready.detail,
		ReadyReported:   a.reported != nil && a.readyKnown && *a.reported == a.ready,
		LastReadyCheck:  a.readyCheck,
		Failback:        a.cfg.Failback,
		Preferred:       a.cfg.Preferred,
		MinSwapInterval: float64(a.cfg.MinSwapInterval.Milliseconds()),
		Failovers:       a.failovers, LastFailover: a.lastFailover,
		Swaps: a.swaps, LastSwap: a.lastSwap,
		LastHooks:   a.lastHooks,
		Failure:     a.failure,
		LastFailure: a.lastFailure,
	}
	switch {
	case !a.haveState:
	case st.Primary == a.node:
		s.Role = RolePrimary
	default:
		s.Role = RoleSecondary
	}
	if a.svc == svcUp {
		s.ServingEpoch = a.svcEpoch
	}
	a.targetMu.Lock()
	url := a.target.cfg.URL
	a.targetMu.Unlock()
	h := a.health
	s.Service = ServiceHealth{
		Target: a.targetKind, URL: url, Up: h.Up, Known: h.Known,
		ConsecutiveFailures: h.ConsecutiveFailures, Probes: h.Probes,
		LastSuccess: h.LastSuccess, LastError: h.LastError,
		LastLatencyMs: float64(h.LastLatency.Microseconds()) / 1000,
	}
	a.mu.Lock()
	a.status = s
	a.mu.Unlock()
}

func (a *Agent) env(e cluster.Epoch, role string) hookEnv {
	export := a.export
	if export == "" {
		export = a.defaultExport
	}
	return hookEnv{node: a.node, peer: a.peerID(), dir: a.dir, epoch: e, role: role, export: export}
}
