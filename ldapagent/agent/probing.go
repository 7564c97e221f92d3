package agent

import (
	"time"

	"github.com/ldmirror/ldmirror/ldapagent/probe"
)

type target struct {
	gen  uint64
	kind string
	cfg  probe.Config
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
		a.log.Warn("directory server down", "target", tg.kind, "url", tg.cfg.URL, "failures", h.ConsecutiveFailures, "err", h.LastError)
	case h.Up && !wasUp:
		a.log.Info("directory server up", "target", tg.kind, "url", tg.cfg.URL, "latency", r.Latency)
	}
}
