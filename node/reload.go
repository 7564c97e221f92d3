package node

import "github.com/ldmirror/ldmirror/ldapagent/probe"

// What may change while the host runs (SIGHUP, `ldmirror adjust`).

// SetResyncRates sets the resync rates in bytes per second (rate 0: no
// limit; minRate 0: a resync never yields to the application). They apply
// at once, to a running resync too.
func (n *Node) SetResyncRates(rate, minRate int64) {
	n.mu.Lock()
	n.cfg.ResyncRate, n.cfg.ResyncMinRate = rate, minRate
	mr := n.mirror
	n.mu.Unlock()
	if mr != nil {
		mr.SetResyncRates(rate, minRate)
	}
}

// resyncRates are the rates a new primary term starts with.
func (n *Node) resyncRates() (rate, minRate int64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cfg.ResyncRate, n.cfg.ResyncMinRate
}

// SetProbe probes the directory server cfg names from now on (none if its
// URL is empty), in place of the one probed so far.
func (n *Node) SetProbe(cfg probe.Config) {
	var m *probe.Monitor
	if cfg.URL != "" {
		m = probe.Start(cfg, func(h probe.Health) {
			if h.Up {
				n.log.Info("directory server up", "url", cfg.URL, "latency", h.LastLatency)
			} else {
				n.log.Warn("directory server down", "url", cfg.URL, "failures", h.ConsecutiveFailures, "err", h.LastError)
			}
		})
	}
	n.mu.Lock()
	old := n.monitor
	n.monitor, n.cfg.Probe = m, cfg
	n.mu.Unlock()
	if old != nil {
		old.Close()
	}
}

// probeConfig is what the probe watches.
func (n *Node) probeConfig() probe.Config {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cfg.Probe
}
