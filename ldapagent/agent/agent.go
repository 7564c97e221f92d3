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

// Errors callers act on.
var (
	// ErrHookFailed is wrapped by a *HookError.
	ErrHookFailed = errors.New("hook failed")
	// ErrNotFailed: Retry was called but the agent has not failed.
	ErrNotFailed = errors.New("the agent has not failed: nothing to retry")
	// ErrBusy: a sequence (promote, demote, failover, swap) is running.
	ErrBusy = errors.New("the agent is busy")
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
	// freshFrom is health.Probes when the primary last changed or
	// reported itself ready again: a failed probe before it says nothing
	// about the primary now.
	freshFrom   uint64
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
		a.log.Warn("no promote hooks: becoming primary starts nothing")
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
		a.log.Info("retrying after a failure", "sequence", f.Sequence, "hook", f.Hook)
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
			return nil, fmt.Errorf("%w: the control plane names %q primary in epoch %d", cluster.ErrNotPrimary, st.Primary, st.Epoch)
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
					a.log.Error("the control plane closed its watch; the agent no longer sees role changes")
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
	a.log.Info("state "+s, "previous", a.state, "epoch", a.st.Epoch, "primary", a.st.Primary)
	a.state, a.stateSince = s, a.now()
}

func (a *Agent) onState(st cluster.VolumeState) {
	prev, had := a.st, a.haveState
	a.st, a.haveState = st, true
	if p, ok := st.Host(st.Primary); ok && p.Ready {
		if q, was := prev.Host(prev.Primary); !had || prev.Primary != st.Primary || !was || !q.Ready {
			a.freshFrom = a.health.Probes
		}
	}
	if had && st.Epoch != prev.Epoch {
		a.freshFrom = a.health.Probes
		a.lastChange = a.now()
		a.peerGoodSince = time.Time{}
		a.log.Info("role change seen", "epoch", st.Epoch, "primary", st.Primary, "previous_primary", prev.Primary)
	}
	if t := a.task; t != nil && t.cancelAwait != nil && !st.Holds(a.node, t.epoch) && !t.roleLost.Load() {
		t.roleLost.Store(true)
		if t.kind == SeqPromote {
			a.log.Warn("the role moved while promoting; stopping before the next hook", "epoch", t.epoch, "primary", st.Primary)
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
		a.log.Info("the role moved away after a failed promotion that started nothing; the failure is cleared", "hook", a.failure.Hook)
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
		s.Role = cluster.RolePrimary
	default:
		s.Role = cluster.RoleSecondary
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

func (a *Agent) env(e cluster.Epoch, role cluster.Role) hookEnv {
	export := a.export
	if export == "" {
		export = a.defaultExport
	}
	return hookEnv{node: a.node, peer: a.peerID(), dir: a.dir, epoch: e, role: role, export: export}
}
