package metrics

import (
	"slices"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ldmirror/ldmirror/mirror"
	"github.com/ldmirror/ldmirror/node"
)

// statusCollector turns the host's status into series at each scrape.
type statusCollector struct {
	status  func() node.Status
	version string
}

// desc is one series family of the status.
type desc struct {
	*prometheus.Desc
	kind prometheus.ValueType
}

func gauge(name, help string, labels ...string) desc {
	return desc{prometheus.NewDesc(name, help, labels, nil), prometheus.GaugeValue}
}

func counter(name, help string, labels ...string) desc {
	return desc{prometheus.NewDesc(name, help, labels, nil), prometheus.CounterValue}
}

var (
	buildInfo   = gauge("ldmirror_build_info", "Always 1; the version of ldmirror and the node's ID.", "version", "node")
	role        = gauge("ldmirror_role", "1 for the role of the host's current term (none while the control plane has named none yet).", "role")
	epoch       = gauge("ldmirror_epoch", "The newest epoch of the control plane this host knows.")
	link        = gauge("ldmirror_link_state", "1 for the state of the link to the peer.", "state")
	replication = gauge("ldmirror_replication_state", "1 for the replication state (docs/operations.md, Status).", "state")
	diskState   = gauge("ldmirror_disk_state", "1 for the disk state of this host (disk=local) and of its peer (disk=peer).", "disk", "state")
	dirtyBlocks = gauge("ldmirror_dirty_blocks", "Blocks that may differ on the peer: writes in flight plus those it missed.")
	dirtyBytes  = gauge("ldmirror_dirty_bytes", "The dirty blocks in bytes.")
	writes      = counter("ldmirror_shipped_writes_total", "Writes and trims the peer acknowledged in this primary term.")
	bytes       = counter("ldmirror_shipped_bytes_total", "Bytes of writes the peer acknowledged in this primary term.")
	flushes     = counter("ldmirror_shipped_flushes_total", "Flushes the peer acknowledged in this primary term.")
	inFlight    = gauge("ldmirror_window_writes", "Writes sent to the peer and not yet acknowledged.")
	window      = gauge("ldmirror_window_size_writes", "Writes that may be in flight to the peer at most.")
	applied     = counter("ldmirror_applied_writes_total", "Writes this secondary applied in this term.")
	appliedB    = counter("ldmirror_applied_bytes_total", "Bytes of writes this secondary applied in this term.")
	applyFail   = counter("ldmirror_apply_failures_total", "Writes that failed to apply on this secondary.")
	rejected    = counter("ldmirror_rejected_connections_total", "Connections this secondary closed before or at authentication.")
	resyncDone  = gauge("ldmirror_resync_done_blocks", "Blocks of the running resync done (on its source and its target).")
	resyncTotal = gauge("ldmirror_resync_total_blocks", "Blocks the running resync copies (0: none runs).")
	resyncRatio = gauge("ldmirror_resync_progress_ratio", "Done over total of the running resync, 0 to 1.")
	resyncRate  = gauge("ldmirror_resync_rate_bytes_per_second", "Average rate of the running resync.")
	resyncETA   = gauge("ldmirror_resync_eta_seconds", "Time the running resync needs still at its average rate.")
	resyncSkip  = counter("ldmirror_resync_skipped_blocks_total", "Blocks checksum resyncs found equal and did not send.")
	journalUsed = gauge("ldmirror_journal_used_bytes", "Async mode: bytes of the journal in use.")
	journalCap  = gauge("ldmirror_journal_capacity_bytes", "Async mode: the journal's capacity.")
	journalLag  = gauge("ldmirror_journal_lag_records", "Async mode: journal records the peer has not acknowledged.")
	failovers   = counter("ldmirror_agent_failovers_total", "Failovers the LDAP agent of this host obtained.")
	swaps       = counter("ldmirror_agent_swaps_total", "Swaps the LDAP agent of this host completed.")
	agentState  = gauge("ldmirror_agent_state", "1 for the LDAP agent's state.", "state")
	hookOK      = gauge("ldmirror_agent_hook_success", "1 if the hook succeeded the last time it ran, else 0.", "sequence", "hook")
	hookTime    = gauge("ldmirror_agent_hook_duration_seconds", "How long the hook ran the last time.", "sequence", "hook")
	probeUp     = gauge("ldmirror_probe_up", "1 if the directory server answered the last probes, 0 if it counts as down.")
	probeFails  = gauge("ldmirror_probe_consecutive_failures", "Failed probes in a row.")
	probes      = counter("ldmirror_probes_total", "Probes of the directory server.")
	probeTime   = gauge("ldmirror_probe_latency_seconds", "How long the last probe took.")

	allDescs = []desc{buildInfo, role, epoch, link, replication, diskState, dirtyBlocks, dirtyBytes, writes, bytes, flushes,
		inFlight, window, applied, appliedB, applyFail, rejected, resyncDone, resyncTotal, resyncRatio, resyncRate, resyncETA,
		resyncSkip, journalUsed, journalCap, journalLag, failovers, swaps, agentState, hookOK, hookTime, probeUp, probeFails,
		probes, probeTime}
)

func (c *statusCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d.Desc
	}
}

func (c *statusCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.status()
	put := func(d desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d.Desc, d.kind, v, labels...)
	}
	set := func(d desc, states []string, current string, labels ...string) {
		for _, s := range states {
			put(d, one(s == current), append(slices.Clone(labels), s)...)
		}
	}
	put(buildInfo, 1, c.version, st.Node)
	set(role, roles, string(st.Role))
	put(epoch, float64(st.Epoch))
	set(link, links, string(st.Link))
	set(replication, replicationLabels, replications[st.Replication])
	set(diskState, diskStates, string(st.Disk), "local")
	if st.PeerDisk != "" {
		set(diskState, diskStates, string(st.PeerDisk), "peer")
	}
	put(dirtyBlocks, float64(st.DirtyBlocks))
	put(dirtyBytes, float64(st.DirtyBytes))
	put(writes, float64(st.WritesShipped))
	put(bytes, float64(st.BytesShipped))
	put(flushes, float64(st.FlushesShipped))
	put(inFlight, float64(st.WindowInUse))
	put(window, float64(st.WindowSize))
	put(applied, float64(st.WritesApplied))
	put(appliedB, float64(st.BytesApplied))
	put(applyFail, float64(st.ApplyFailures))
	put(rejected, float64(st.RejectedConns))
	running := st.Replication == node.ReplicationResyncTarget || st.Replication == mirror.StateResyncing
	var done, total, ratio, rate, eta float64
	if running && st.ResyncTotal > 0 {
		done, total = float64(st.ResyncDone), float64(st.ResyncTotal)
		ratio, rate, eta = done/total, st.ResyncRate, st.ResyncETASec
	}
	put(resyncDone, done)
	put(resyncTotal, total)
	put(resyncRatio, ratio)
	put(resyncRate, rate)
	put(resyncETA, eta)
	put(resyncSkip, float64(st.ResyncSkipped))
	put(journalUsed, float64(st.JournalUsed))
	put(journalCap, float64(st.JournalCapacity))
	put(journalLag, float64(st.JournalLag))
	if a := st.Agent; a != nil {
		put(failovers, float64(a.Failovers))
		put(swaps, float64(a.Swaps))
		set(agentState, agentStates, a.State)
		for _, h := range a.LastHooks {
			put(hookOK, one(h.OK()), h.Sequence, h.Name)
			put(hookTime, h.DurationMs/1000, h.Sequence, h.Name)
		}
	}
	if p := st.LDAP; p != nil {
		put(probeUp, one(p.Up))
		put(probeFails, float64(p.ConsecutiveFailures))
		put(probes, float64(p.Probes))
		put(probeTime, p.LastLatencyMs/1000)
	}
}

func one(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
