package agent

import (
	"context"
	"errors"
	"fmt"

	"github.com/ldmirror/ldmirror/cluster"
)

// The sequences. Each start* runs in the loop: it records the task, then
// spawns a goroutine that does the slow part and hands its outcome back to
// the loop with send, where finish* applies it. Only one task runs at a
// time.

func (a *Agent) startTask(kind string, epoch cluster.Epoch) *task {
	t := &task{kind: kind, epoch: epoch}
	a.task = t
	return t
}

// finishTask ends t and answers whoever waits for it.
func (a *Agent) finishTask(t *task, r taskResult) {
	if a.task == t {
		a.task = nil
	}
	for _, w := range t.waiters {
		w <- r
	}
}

// fail puts the agent in StateFailed.
func (a *Agent) fail(f Failure) {
	if a.ctx.Err() != nil {
		return // a hook killed by Close is not a failure to report
	}
	f.At = a.now()
	a.failure, a.lastFailure = &f, &f
	a.setState(StateFailed)
	a.log.Error("FAILED: no further role change until the cause is fixed and the agent retried",
		"sequence", f.Sequence, "context", f.Context, "hook", f.Hook, "exit_code", f.ExitCode, "err", f.Error, "epoch", f.Epoch)
}

func failureOf(err error, seq, context string, epoch cluster.Epoch) Failure {
	f := Failure{Sequence: seq, Context: context, Epoch: epoch, ExitCode: -1, Error: err.Error()}
	var he *HookError
	if errors.As(err, &he) {
		f.Hook, f.ExitCode, f.TimedOut, f.Error, f.Tail = he.Result.Name, he.Result.ExitCode, he.Result.TimedOut, he.Result.Error, he.Result.Tail
	} else {
		f.Hook = "await-volume"
	}
	return f
}

// seqResult is the outcome of a promote sequence.
type seqResult struct {
	export  string
	results []HookResult
	// stopped: the role moved, and the sequence stopped before its next
	// step (or the agent is closing).
	stopped bool
	// err is a *HookError, or the volume's error from AwaitPrimary.
	err error
}

func (r seqResult) ok() bool { return r.err == nil && !r.stopped }

// startPromote serves the directory here in epoch e: wait for the volume,
// then run the promote hooks.
func (a *Agent) startPromote(e cluster.Epoch) {
	t := a.startTask(SeqPromote, e)
	awaitCtx, cancel := context.WithCancel(a.ctx)
	t.cancelAwait = cancel
	a.setState(StatePromoting)
	a.log.Info("this host is primary: waiting for the volume, then running the promote hooks", "epoch", e)
	env := a.env(e, cluster.RolePrimary)
	a.spawn(func() {
		defer cancel()
		r := a.promote(t, awaitCtx, env)
		a.send(func() { a.finishPromote(t, r) })
	})
}

// promote is the slow part of a promotion, also used to restore the
// service after a failed swap.
func (a *Agent) promote(t *task, awaitCtx context.Context, env hookEnv) seqResult {
	export, err := a.vol.AwaitPrimary(awaitCtx, t.epoch)
	if err != nil {
		if t.roleLost.Load() || a.ctx.Err() != nil {
			return seqResult{stopped: true}
		}
		return seqResult{err: fmt.Errorf("waiting for the volume to become writable in epoch %d: %w", t.epoch, err)}
	}
	env.export = export
	res, stopped, err := runSequence(a.ctx, a.log, SeqPromote, a.cfg.Promote, env, t.roleLost.Load)
	return seqResult{export: export, results: res, stopped: stopped || (err != nil && a.ctx.Err() != nil), err: err}
}

func (a *Agent) finishPromote(t *task, r seqResult) {
	if len(r.results) > 0 {
		a.lastHooks = r.results
	}
	a.applyPromote(t.epoch, r, "promotion")
	a.finishTask(t, taskResult{epoch: t.epoch, err: r.err})
}

// applyPromote records what a promote sequence left running.
func (a *Agent) applyPromote(e cluster.Epoch, r seqResult, context string) {
	if r.export != "" {
		a.export = r.export
	}
	switch {
	case r.ok():
		a.svc, a.svcEpoch = svcUp, e
		a.log.Info("promoted: this host serves the directory", "epoch", e, "export", r.export)
	case r.err != nil:
		if len(r.results) > 0 {
			a.svc, a.svcEpoch = svcPartial, e
		}
		a.fail(failureOf(r.err, SeqPromote, context, e))
	default: // stopped: the role moved
		if len(r.results) > 0 {
			a.svc, a.svcEpoch = svcPartial, e
		}
		a.log.Warn("promotion stopped: this host is no longer primary in its epoch", "epoch", e, "hooks_run", len(r.results))
	}
}

// startDemote stops the directory server here: the demote hooks.
func (a *Agent) startDemote(reason string) {
	t := a.startTask(SeqDemote, 0)
	a.setState(StateDemoting)
	a.log.Info("running the demote hooks", "reason", reason, "epoch", a.st.Epoch)
	env := a.env(a.st.Epoch, cluster.RoleSecondary)
	a.spawn(func() {
		res, _, err := runSequence(a.ctx, a.log, SeqDemote, a.cfg.Demote, env, nil)
		a.send(func() { a.finishDemote(t, reason, res, err) })
	})
}

func (a *Agent) finishDemote(t *task, reason string, res []HookResult, err error) {
	if len(res) > 0 {
		a.lastHooks = res
	}
	if err != nil {
		if a.svc != svcUnknown {
			a.svc = svcPartial
		}
		a.fail(failureOf(err, SeqDemote, reason, a.st.Epoch))
	} else {
		a.svc, a.svcEpoch, a.export = svcDown, 0, ""
		if a.failure != nil {
			a.log.Info("demoted after the failed promotion; the failure is cleared", "hook", a.failure.Hook)
			a.failure = nil
		}
		a.log.Info("demoted: the directory server is stopped here", "epoch", a.st.Epoch)
	}
	a.finishTask(t, taskResult{epoch: a.st.Epoch, err: err})
}

// startFailover asks the control plane to move the role from failed,
// primary of epoch, to this host, after this host's ready check passed.
func (a *Agent) startFailover(failed string, epoch cluster.Epoch, reason string) {
	t := a.startTask(taskFailover, 0)
	a.setState(StateFailingOver)
	a.log.Warn("failing over to this host", "from", failed, "epoch", epoch, "reason", reason)
	env := a.env(epoch, cluster.RoleSecondary)
	a.spawn(func() {
		var rc *HookResult
		if a.cfg.ReadyCheck != nil {
			r := runHook(a.ctx, a.log, SeqReadyCheck, *a.cfg.ReadyCheck, env)
			rc = &r
			if !r.OK() {
				a.send(func() { a.finishFailover(t, rc, failed, reason, "", 0, nil) })
				return
			}
		}
		ctx, cancel := context.WithTimeout(a.ctx, a.cfg.ControlTimeout)
		p, e, err := a.cp.Failover(ctx, failed, epoch)
		cancel()
		a.send(func() { a.finishFailover(t, rc, failed, reason, p, e, err) })
	})
}

func (a *Agent) finishFailover(t *task, rc *HookResult, failed, reason, primary string, e cluster.Epoch, err error) {
	if rc != nil {
		a.noteReadyCheck(*rc)
		if !rc.OK() {
			a.attemptHold = "this host's ready_check failed: " + hookSummary(*rc)
			a.finishTask(t, taskResult{})
			return
		}
	}
	now := a.now()
	ch := &RoleChange{At: now, From: failed, To: primary, Epoch: e, Reason: reason}
	a.lastFailover = ch
	switch {
	case err == nil:
		a.failovers++
		a.lastChange = now
		a.expectEpoch = e
		a.log.Warn("failover committed", "from", failed, "to", primary, "epoch", e)
	case errors.Is(err, cluster.ErrStaleEpoch), errors.Is(err, cluster.ErrNotPrimary):
		ch.Error = err.Error()
		a.log.Info("failover refused: the role moved meanwhile", "err", err)
	default:
		ch.Error = err.Error()
		a.attemptHold = "the control plane refused the failover: " + err.Error()
		a.log.Warn("failover refused", "from", failed, "epoch", e, "err", err)
	}
	a.finishTask(t, taskResult{epoch: e, err: err})
}

// swapResult is the outcome of a swap.
type swapResult struct {
	demote    []HookResult
	demoteErr error
	epoch     cluster.Epoch // the new epoch, on success
	swapErr   error
	// roleMoved: the swap failed but the control plane no longer names
	// this host primary in its epoch, so nothing was restored.
	roleMoved bool
	// restore is the promote sequence run to restore the service after a
	// failure; restored says it ran.
	restore  seqResult
	restored bool
}

// startSwap hands the role to the peer: demote hooks, Volume.Swap, and
// the promote hooks again if that fails while this host holds the role.
func (a *Agent) startSwap(reason string, auto bool) *task {
	t := a.startTask(taskSwap, a.st.Epoch)
	awaitCtx, cancel := context.WithCancel(a.ctx)
	t.cancelAwait = cancel
	a.setState(StateSwapping)
	peer := a.peerID()
	a.log.Warn("swapping the primary role", "to", peer, "epoch", t.epoch, "reason", reason)
	env := a.env(t.epoch, cluster.RoleSecondary)
	a.spawn(func() {
		defer cancel()
		r := a.swap(t, awaitCtx, env)
		a.send(func() { a.finishSwap(t, peer, reason, auto, r) })
	})
	return t
}

func (a *Agent) swap(t *task, awaitCtx context.Context, env hookEnv) swapResult {
	var r swapResult
	// Tell the peer's agent first: while the demote hooks stop the
	// directory server here, its probes fail, and it must not take that
	// for a failure (failoverHold). Without quorum the swap cannot commit
	// anyway; it goes on and fails there.
	rctx, rcancel := context.WithTimeout(a.ctx, a.cfg.ControlTimeout)
	if err := a.cp.ReportReady(rctx, a.node, false, detailSwapping); err != nil {
		a.log.Warn("could not tell the control plane that a swap starts", "err", err)
	}
	rcancel()
	r.demote, _, r.demoteErr = runSequence(a.ctx, a.log, SeqDemote, a.cfg.Demote, env, nil)
	if r.demoteErr == nil {
		ctx, cancel := context.WithTimeout(a.ctx, a.cfg.SwapTimeout)
		r.epoch, r.swapErr = a.vol.Swap(ctx)
		cancel()
		if r.swapErr == nil {
			return r
		}
		a.log.Error("volume swap failed", "err", r.swapErr)
	}
	if a.ctx.Err() != nil {
		return r
	}
	if !a.cp.State().Holds(a.node, t.epoch) {
		r.roleMoved = true
		return r
	}
	a.log.Warn("restoring the service on this host after the failed swap", "epoch", t.epoch)
	ctx, cancel := context.WithTimeout(awaitCtx, a.cfg.SwapTimeout)
	defer cancel()
	env.role = cluster.RolePrimary
	r.restore, r.restored = a.promote(t, ctx, env), true
	return r
}

func (a *Agent) finishSwap(t *task, peer, reason string, auto bool, r swapResult) {
	if hooks := append(append([]HookResult(nil), r.demote...), r.restore.results...); len(hooks) > 0 {
		a.lastHooks = hooks
	}
	now := a.now()
	ch := &RoleChange{At: now, From: a.node, To: peer, Reason: reason}
	a.lastSwap = ch
	if r.demoteErr == nil && r.swapErr == nil {
		ch.Epoch = r.epoch
		a.swaps++
		a.svc, a.svcEpoch, a.export = svcDown, 0, ""
		a.failure = nil
		a.lastChange = now
		a.expectEpoch = r.epoch
		a.log.Warn("swap done", "to", peer, "epoch", r.epoch)
		a.finishTask(t, taskResult{epoch: r.epoch})
		return
	}
	cause := r.demoteErr
	if cause == nil {
		cause = fmt.Errorf("volume swap: %w", r.swapErr)
		a.svc = svcDown
	} else {
		a.svc, a.svcEpoch = svcPartial, t.epoch
	}
	var outcome string
	switch {
	case a.ctx.Err() != nil:
		outcome = "the agent is stopping"
	case r.roleMoved:
		outcome = "the control plane moved the role anyway; nothing restored here"
	case r.restored && r.restore.ok():
		outcome = "the service was restored on this host"
	case r.restored && r.restore.err == nil:
		outcome = "the role moved while the service was being restored"
	}
	if r.restored {
		a.applyPromote(t.epoch, r.restore, "restoring the service after a failed swap")
		if r.restore.err != nil {
			outcome = "restoring the service here failed too: " + r.restore.err.Error()
		}
	}
	ch.Error = cause.Error() + "; " + outcome
	if auto {
		a.peerGoodSince = now // wait failback_after again before the next attempt
	}
	a.log.Error("swap failed", "to", peer, "err", cause, "outcome", outcome)
	a.finishTask(t, taskResult{epoch: t.epoch, err: fmt.Errorf("swap to %s: %w; %s", peer, cause, outcome)})
}
