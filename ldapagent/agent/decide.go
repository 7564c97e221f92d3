package agent

import (
	"fmt"
	"time"

	"github.com/ldmirror/ldmirror/cluster"
)

// evaluateFailover decides, on a secondary, whether to ask for the role.
func (a *Agent) evaluateFailover() {
	st, h := a.st, a.health
	// Only failures since the primary last changed or reported ready count:
	// older ones saw it before its promote hooks started the service.
	fresh := min(uint64(h.ConsecutiveFailures), h.Probes-min(h.Probes, a.freshFrom))
	down := a.targetKind == targetPeer && fresh >= uint64(a.cfg.Threshold)
	if !down {
		if a.episode {
			a.log.Info("the primary's directory server answers again", "primary", st.Primary)
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
			a.log.Warn("not failing over: "+reason, "primary", st.Primary, "epoch", st.Epoch,
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
	p, ok := st.Host(st.Primary)
	if !ok || p.Ready {
		return ""
	}
	since := now.Sub(p.ReadySince)
	switch p.ReadyDetail {
	case detailSwapping:
		// Its directory server is down because it hands the role over; a
		// swap that takes longer than swap_timeout (plus the probes that
		// notice) has failed, and the failover goes on.
		if since < a.cfg.SwapTimeout+a.cfg.ControlTimeout {
			return fmt.Sprintf("%s is handing the role over (swap in progress for %v)", st.Primary, since.Round(time.Second))
		}
	case detailPromoting:
		// Its promote hooks are starting the directory server; they take
		// at most their timeouts (this host's, the pair's usual
		// configuration), after which the primary reports them failed.
		if since < a.promoteBudget()+a.cfg.ControlTimeout {
			return fmt.Sprintf("%s is starting the directory server (promote in progress for %v)", st.Primary, since.Round(time.Second))
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
		a.log.Info("the preferred host is uptodate and ready; failing back after failback_after", "preferred", pref, "failback_after", a.cfg.FailbackAfter)
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
		a.log.Info(s)
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
