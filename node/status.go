package node

import (
	"time"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/export"
	"github.com/ldmirror/ldmirror/ldapagent/agent"
	"github.com/ldmirror/ldmirror/mirror"
	"github.com/ldmirror/ldmirror/replica"
	"github.com/ldmirror/ldmirror/transport"
)

// Status is what `ldmirror status` shows. Sizes are bytes, times seconds.
type Status struct {
	Node        string       `json:"node"`
	Role        cluster.Role `json:"role"`
	VolumeUUID  string       `json:"volume_uuid"`
	SizeBytes   int64        `json:"size_bytes"`
	BlockSize   int          `json:"block_size_bytes"`
	Mode        string       `json:"mode"`
	Link        Link         `json:"link"`
	Peer        string       `json:"peer,omitempty"`
	PeerNode    string       `json:"peer_node,omitempty"`
	Replication mirror.State `json:"replication"`
	// Transition says what a role change waits for, e.g. a loop device to
	// be detached after this host lost the primary role.
	Transition  string            `json:"transition,omitempty"`
	Disk        cluster.DiskState `json:"disk"`
	PeerDisk    cluster.DiskState `json:"peer_disk,omitempty"`
	UptimeSec   float64           `json:"uptime_seconds"`
	Generations string            `json:"generations"`
	// With a control plane: the newest epoch this host's copy of the
	// control plane knows, the epoch its primary term serves in (it
	// differs from Epoch only for a deposed primary about to step down),
	// and the primary the control plane names.
	Epoch        uint64 `json:"epoch,omitempty"`
	ServingEpoch uint64 `json:"serving_epoch,omitempty"`
	NamedPrimary string `json:"named_primary,omitempty"`
	RaftLeader   string `json:"raft_leader,omitempty"`
	// NoControlPlane: the role comes from --role alone, so nothing stops
	// a second primary (development mode).
	NoControlPlane bool `json:"no_control_plane,omitempty"`

	// LinkSecurity is how the connected link is protected: the TLS
	// version and cipher suite, or plaintext.
	LinkSecurity string `json:"link_security,omitempty"`

	// Directory server health, with a probe configured.
	LDAP *LDAPHealth `json:"ldap,omitempty"`
	// Agent is the LDAP agent's state, when one runs.
	Agent *agent.Status `json:"agent,omitempty"`

	// Primary.
	DirtyBlocks    uint64 `json:"dirty_blocks"`
	DirtyBytes     uint64 `json:"dirty_bytes"`
	WritesShipped  uint64 `json:"writes_shipped"`
	BytesShipped   uint64 `json:"bytes_shipped"`
	FlushesShipped uint64 `json:"flushes_shipped"`
	WindowInUse    int    `json:"window_in_use"`
	WindowSize     int    `json:"window_size"`
	// Async mode: the journal (bytes, record numbers) and how the last
	// reconnect caught up ("journal" or "bitmap").
	JournalUsed     int64    `json:"journal_used_bytes,omitempty"`
	JournalCapacity int64    `json:"journal_capacity_bytes,omitempty"`
	JournalLag      uint64   `json:"journal_lag_records,omitempty"`
	JournalNewest   uint64   `json:"journal_newest_seq,omitempty"`
	PeerDurableSeq  uint64   `json:"peer_durable_seq,omitempty"`
	Throttled       int      `json:"throttled_writers,omitempty"`
	CatchUpFrom     uint64   `json:"catchup_from_seq,omitempty"`
	CatchUpTo       uint64   `json:"catchup_to_seq,omitempty"`
	LastCatchUp     string   `json:"last_catchup,omitempty"`
	JournalOverflow bool     `json:"journal_overflow,omitempty"`
	FallbackReason  string   `json:"fallback_reason,omitempty"`
	ResyncDone      uint64   `json:"resync_done_blocks,omitempty"`
	ResyncTotal     uint64   `json:"resync_total_blocks,omitempty"`
	ResyncRate      float64  `json:"resync_rate_bytes_per_second,omitempty"`
	ResyncSkipped   uint64   `json:"resync_skipped_blocks,omitempty"`
	ResyncSent      uint64   `json:"resync_sent_blocks,omitempty"`
	ResyncETASec    float64  `json:"resync_eta_seconds,omitempty"`
	ResyncYielding  bool     `json:"resync_yielding,omitempty"`
	VerifyDone      uint64   `json:"verify_done_blocks,omitempty"`
	VerifyTotal     uint64   `json:"verify_total_blocks,omitempty"`
	BitmapBytes     uint64   `json:"bitmap_memory_bytes"`
	Export          string   `json:"export,omitempty"`
	LoopDevices     []string `json:"loop_devices,omitempty"`
	LastError       string   `json:"last_error,omitempty"`

	// Secondary.
	AppliedSeq    uint64 `json:"applied_seq,omitempty"`
	WritesApplied uint64 `json:"writes_applied,omitempty"`
	BytesApplied  uint64 `json:"bytes_applied,omitempty"`
	ApplyFailures uint64 `json:"apply_failures,omitempty"`
	ApplyPending  int    `json:"apply_pending,omitempty"`
	RejectedConns uint64 `json:"rejected_connections,omitempty"`
	// BehindBlocks are blocks this host wrote as primary that may differ
	// from the current primary; its next resync covers them.
	BehindBlocks uint64 `json:"behind_blocks,omitempty"`

	// A resync's target (docs/operations.md, "The source died during a
	// resync"): what its staging area holds, as of when its volume is
	// consistent, the log's size, and the apply of a completed resync.
	ResyncTarget     string    `json:"resync_target,omitempty"`
	ConsistentAsOf   time.Time `json:"consistent_as_of,omitzero"`
	StagedBytes      int64     `json:"staged_bytes,omitempty"`
	ApplyDoneBlocks  uint64    `json:"apply_done_blocks,omitempty"`
	ApplyTotalBlocks uint64    `json:"apply_total_blocks,omitempty"`
	// A resync's source: what its peer stages, and as of when the peer's
	// volume is consistent meanwhile.
	PeerStage          string    `json:"peer_stage,omitempty"`
	PeerConsistentAsOf time.Time `json:"peer_consistent_as_of,omitzero"`
}

// Replication states status shows beside the mirror's own
// (mirror.StateReplicating and the others).
const (
	// ReplicationSuspended: writes the peer lacks wait for the control
	// plane to mark it outdated (no quorum yet).
	ReplicationSuspended mirror.State = "suspended"
	// ReplicationFenced: the control plane refused to mark the peer
	// outdated, because this host is no longer primary: such writes fail.
	ReplicationFenced mirror.State = "fenced: writes refused"
	// ReplicationNoTerm: the host waits for the control plane to name its
	// role.
	ReplicationNoTerm mirror.State = "waiting for the control plane"
	// ReplicationNoPrimary: a secondary without a primary connected.
	ReplicationNoPrimary mirror.State = "waiting for primary"
	// ReplicationNone: a passthrough primary replicates nothing.
	ReplicationNone mirror.State = "none"
	// ReplicationResyncTarget: a secondary the primary resyncs; its
	// progress is the primary's (resync_done_blocks and the others).
	ReplicationResyncTarget mirror.State = "resync-target"
)

// LDAPHealth is the directory server probe's view.
type LDAPHealth struct {
	URL                 string    `json:"url"`
	Up                  bool      `json:"up"`
	Known               bool      `json:"known"`
	ConsecutiveFailures int       `json:"consecutive_failures"`
	Probes              uint64    `json:"probes"`
	LastSuccess         time.Time `json:"last_success,omitzero"`
	LastError           string    `json:"last_error,omitempty"`
	LastLatencyMs       float64   `json:"last_latency_ms"`
}

// Status returns the host's current state. With a control plane, the disk
// states are the control plane's: what promotion decisions go by.
func (n *Node) Status() Status {
	st := n.localStatus()
	if err := n.diskFailure(); err != nil {
		st.Disk, st.LastError = cluster.DiskFailed, err.Error()
	}
	if n.agent != nil {
		as := n.agent.Status()
		st.Agent = &as
	}
	cp := n.cfg.ControlPlane
	if cp == nil {
		st.NoControlPlane = true
		return st
	}
	cs := n.controlState()
	st.Epoch, st.NamedPrimary = uint64(cs.Epoch), cs.Primary
	st.RaftLeader, _ = cp.Leader()
	for _, h := range cs.Hosts {
		switch {
		case h.Witness:
		case h.ID == n.cfg.NodeID:
			if st.Disk == cluster.DiskUpToDate { // a local failure stays shown
				st.Disk = h.Disk
			}
		default:
			st.PeerDisk = h.Disk
		}
	}
	return st
}

func (n *Node) localStatus() Status {
	st := Status{
		Node:       n.cfg.NodeID,
		VolumeUUID: n.meta.VolumeUUID.String(),
		SizeBytes:  n.meta.Size,
		BlockSize:  n.meta.BlockSize,
		Mode:       "sync",
		Peer:       n.cfg.Peer,
		Disk:       cluster.DiskUpToDate,
		UptimeSec:  time.Since(n.started).Seconds(),
	}
	n.mu.Lock()
	st.Role, st.Transition = n.role, n.transition
	if n.role == cluster.RolePrimary {
		st.ServingEpoch = uint64(n.epoch)
	}
	mr, exp, ln, replica := n.mirror, n.export, n.ln, n.replica
	st.Link, st.PeerNode = n.link, n.peerNode
	if n.link == LinkConnected {
		st.LinkSecurity = n.security
	}
	st.Generations = n.meta.Generations.String()
	refused := n.refused
	if n.behind != nil {
		st.BehindBlocks = n.behind.GetCardinality()
	}
	if n.verifying {
		st.VerifyDone, st.VerifyTotal = n.verified[0], n.verified[1]
	}
	monitor, probeURL := n.monitor, n.cfg.Probe.URL
	target, targetAt := n.target, n.targetAt
	n.mu.Unlock()
	if monitor != nil {
		h := monitor.Health()
		st.LDAP = &LDAPHealth{
			URL: probeURL, Up: h.Up, Known: h.Known, ConsecutiveFailures: h.ConsecutiveFailures, Probes: h.Probes,
			LastSuccess: h.LastSuccess, LastError: h.LastError, LastLatencyMs: float64(h.LastLatency.Microseconds()) / 1000,
		}
	}
	if refused != "" {
		st.LastError = refused
	}
	switch {
	case ln != nil:
		secondaryStatus(&st, ln, replica)
		targetStatus(&st, target, targetAt)
		n.stageStatus(&st)
		if n.generations().Discarded() {
			st.Disk = cluster.DiskInconsistent // resolve --discard-local: until the full resync ends
		}
		return st
	case mr == nil:
		st.Replication = ReplicationNoTerm
		n.stageStatus(&st)
		return st
	}
	if exp != nil {
		st.Export = exp.Path()
		st.LoopDevices = export.LoopDevicesOf(st.Export)
	}
	if n.cfg.Passthrough {
		st.Mode, st.Replication = "passthrough", ReplicationNone
		return st
	}
	ms := mr.Status()
	mirrorStatus(&st, ms)
	peerStageStatus(&st, ms.PeerStage)
	if refused == "" {
		st.LastError = ms.LastError
	}
	if n.cfg.Peer != "" {
		st.PeerDisk = cluster.DiskUpToDate
		if ms.DirtyBlocks > 0 || !ms.Connected {
			st.PeerDisk = cluster.DiskOutdated
		}
	}
	if st.Link == LinkConnected && !ms.Connected {
		st.Link, st.LinkSecurity = LinkDisconnected, ""
	}
	return st
}

// setSecurity records how the primary's new session is protected.
func (n *Node) setSecurity(s string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.security = s
}

func secondaryStatus(st *Status, ln *transport.Listener, replica *replica.Replica) {
	st.Replication = mirror.StateReplicating
	st.Link = LinkConnecting
	if s := ln.Active(); s != nil {
		st.Link = LinkConnected
		st.PeerNode = s.Peer().NodeID
		st.LinkSecurity = s.Security()
	} else {
		st.Replication = ReplicationNoPrimary
	}
	rs := replica.Status()
	st.AppliedSeq, st.WritesApplied, st.BytesApplied = rs.AppliedSeq, rs.Writes, rs.Bytes
	st.ApplyFailures, st.ApplyPending = rs.Failures, rs.Pending
	st.RejectedConns = ln.Rejected()
	if rs.Failures > 0 {
		st.Disk = cluster.DiskInconsistent // writes failed to apply here
	}
}

// mirrorStatus copies a primary's mirror status into st, under the names
// and units of the status operators read (docs/operations.md).
func mirrorStatus(st *Status, ms mirror.Status) {
	st.Mode, st.Replication = ms.Mode, ms.Replication
	st.JournalUsed, st.JournalCapacity, st.JournalLag = ms.JournalUsed, ms.JournalCapacity, ms.JournalLag
	st.JournalNewest, st.PeerDurableSeq, st.Throttled = ms.JournalNewest, ms.PeerDurable, ms.Throttled
	st.CatchUpFrom, st.CatchUpTo, st.LastCatchUp = ms.CatchUpFrom, ms.CatchUpTo, ms.LastCatchUp
	st.JournalOverflow, st.FallbackReason = ms.JournalOverflow, ms.FallbackReason
	switch {
	case ms.Fenced:
		st.Replication = ReplicationFenced
	case ms.Suspended:
		st.Replication = ReplicationSuspended
	}
	st.DirtyBlocks = ms.DirtyBlocks
	st.DirtyBytes = ms.DirtyBlocks * uint64(ms.BlockSize)
	st.WritesShipped, st.BytesShipped, st.FlushesShipped = ms.Writes, ms.Bytes, ms.Flushes
	st.WindowInUse, st.WindowSize = ms.InFlight, ms.Window
	st.ResyncDone, st.ResyncTotal, st.ResyncSkipped, st.ResyncSent = ms.Resync.Done, ms.Resync.Total, ms.Resync.Skipped, ms.Resync.Sent
	st.ResyncYielding = ms.Resync.Yielding
	if ms.Replication == mirror.StateResyncing {
		if secs := time.Since(ms.Resync.Start).Seconds(); secs > 0 && ms.Resync.Done > 0 {
			st.ResyncRate = float64(ms.Resync.Done*uint64(ms.BlockSize)) / secs
			st.ResyncETASec = float64((ms.Resync.Total-ms.Resync.Done)*uint64(ms.BlockSize)) / st.ResyncRate
		}
	}
	st.BitmapBytes = ms.BitmapMemory
}
