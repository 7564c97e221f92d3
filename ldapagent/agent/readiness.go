package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/ldmirror/ldmirror/cluster"
)

type readiness struct {
	ready  bool
	detail string
}

// detailSwapping is the readiness detail of a primary whose agent runs a
// swap: its peer's agent does not fail over meanwhile.
const detailSwapping = taskSwap + " in progress"

// detailPromoting is the readiness detail of a primary whose promote hooks
// run: its peer's agent does not fail over meanwhile, within the hooks'
// timeouts.
const detailPromoting = SeqPromote + " in progress"

// promoteBudget is the longest the promote hooks may run: the sum of
// their timeouts.
func (a *Agent) promoteBudget() time.Duration {
	var d time.Duration
	for _, h := range a.cfg.Promote {
		d += h.Timeout
	}
	return d
}

// maybeReadyCheck runs the ready check every ReadyInterval on a secondary.
func (a *Agent) maybeReadyCheck() {
	rc := a.cfg.ReadyCheck
	if rc == nil || a.readyChecking || (!a.readyCheckAt.IsZero() && a.now().Sub(a.readyCheckAt) < a.cfg.ReadyInterval) {
		return
	}
	a.readyChecking = true
	a.readyCheckAt = a.now()
	env := a.env(a.st.Epoch, cluster.RoleSecondary)
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
					a.log.Warn("could not report readiness to the control plane; retrying", "ready", want.ready, "err", err)
					a.reportErrShown = true
				}
				return
			}
			a.reportFailedAt, a.reportErrShown = time.Time{}, false
			a.reported = &want
			a.log.Info("readiness reported", "ready", want.ready, "detail", want.detail)
		})
	})
}
