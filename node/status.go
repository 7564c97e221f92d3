package node

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/ldmirror/ldmirror/blockdev"
	"github.com/ldmirror/ldmirror/ldapagent/agent"
	"github.com/ldmirror/ldmirror/transport"
)

// Status is what `ldmirror status` shows. Sizes are bytes, times seconds.
type Status struct {
	Node        string `json:"node"`
	Role        string `json:"role"`
	VolumeUUID  string `json:"volume_uuid"`
	SizeBytes   int64  `json:"size_bytes"`
	BlockSize   int    `json:"block_size_bytes"`
	Mode        string `json:"mode"`
	Link        string `json:"link"`
	Peer        string `json:"peer,omitempty"`
	PeerNode    string `json:"peer_node,omitempty"`
	Replication string `json:"replication"`
	// Transition says what a role change waits for, e.g. a loop device to
	// be detached after this host lost the primary role.
	Transition  string  `json:"transition,omitempty"`
	Disk        string  `json:"disk"`
	PeerDisk    string  `json:"peer_disk,omitempty"`
	UptimeSec   float64 `json:"uptime_seconds"`
	Generations string  `json:"generations"`
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
}

// Replication states of a primary that cannot replicate, beside the
// mirror's own (blockdev.StateReplicating and the others).
const (
	// ReplicationSuspended: writes the peer lacks wait for the control
	// plane to mark it outdated (no quorum yet).
	ReplicationSuspended = "suspended"
	// ReplicationFenced: the control plane refused to mark the peer
	// outdated, because this host is no longer primary: such writes fail.
	ReplicationFenced = "fenced: writes refused"
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
	if n.agent != nil {
		as := n.agent.Status()
		st.Agent = &as
	}
	cp := n.cfg.ControlPlane
	if cp == nil {
		st.NoControlPlane = true
		return st
	}
	cs := cp.State()
	st.Epoch, st.NamedPrimary = uint64(cs.Epoch), cs.Primary
	st.RaftLeader, _ = cp.Leader()
	for _, h := range cs.Hosts {
		switch {
		case h.Witness:
		case h.ID == n.cfg.NodeID:
			if st.Disk == "uptodate" { // a local failure stays shown
				st.Disk = string(h.Disk)
			}
		default:
			st.PeerDisk = string(h.Disk)
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
		Disk:       "uptodate",
		UptimeSec:  time.Since(n.started).Seconds(),
	}
	n.mu.Lock()
	st.Role, st.Transition = n.role, n.transition
	if n.role == RolePrimary {
		st.ServingEpoch = uint64(n.epoch)
	}
	mirror, export, ln, replica := n.mirror, n.export, n.ln, n.replica
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
	n.mu.Unlock()
	if n.monitor != nil {
		h := n.monitor.Health()
		st.LDAP = &LDAPHealth{
			URL: n.cfg.Probe.URL, Up: h.Up, Known: h.Known, ConsecutiveFailures: h.ConsecutiveFailures, Probes: h.Probes,
			LastSuccess: h.LastSuccess, LastError: h.LastError, LastLatencyMs: float64(h.LastLatency.Microseconds()) / 1000,
		}
	}
	if refused != "" {
		st.LastError = refused
	}
	switch {
	case ln != nil:
		secondaryStatus(&st, ln, replica)
		if n.generations().Discarded() {
			st.Disk = "inconsistent" // resolve --discard-local: until the full resync ends
		}
		return st
	case mirror == nil:
		st.Replication = "waiting for the control plane"
		return st
	}
	if export != nil {
		st.Export = export.Path()
		st.LoopDevices = blockdev.LoopDevicesOf(st.Export)
	}
	if n.cfg.Passthrough {
		st.Mode, st.Replication = "passthrough", "none"
		return st
	}
	ms := mirror.Status()
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
	st.ResyncDone, st.ResyncTotal, st.ResyncSkipped, st.ResyncSent = ms.ResyncDone, ms.ResyncTotal, ms.ResyncSkip, ms.ResyncSent
	st.ResyncYielding = ms.ResyncYielding
	if ms.Replication == blockdev.StateResyncing {
		if secs := time.Since(ms.ResyncStart).Seconds(); secs > 0 && ms.ResyncDone > 0 {
			st.ResyncRate = float64(ms.ResyncDone*uint64(ms.BlockSize)) / secs
			st.ResyncETASec = float64((ms.ResyncTotal-ms.ResyncDone)*uint64(ms.BlockSize)) / st.ResyncRate
		}
	}
	st.BitmapBytes = ms.BitmapMemory
	if refused == "" {
		st.LastError = ms.LastError
	}
	if n.cfg.Peer != "" {
		st.PeerDisk = "uptodate"
		if ms.DirtyBlocks > 0 || !ms.Connected {
			st.PeerDisk = "outdated"
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

func secondaryStatus(st *Status, ln *transport.Listener, replica *blockdev.Replica) {
	st.Replication = "replicating"
	st.Link = LinkConnecting
	if s := ln.Active(); s != nil {
		st.Link = LinkConnected
		st.PeerNode = s.Peer().NodeID
		st.LinkSecurity = s.Security()
	} else {
		st.Replication = "waiting for primary"
	}
	rs := replica.Status()
	st.AppliedSeq, st.WritesApplied, st.BytesApplied = rs.AppliedSeq, rs.Writes, rs.Bytes
	st.ApplyFailures, st.ApplyPending = rs.Failures, rs.Pending
	st.RejectedConns = ln.Rejected()
	if rs.Failures > 0 {
		st.Disk = "inconsistent" // writes failed to apply here
	}
}

// WriteText prints st for an operator.
func (st *Status) WriteText(w io.Writer) {
	row := func(k, format string, a ...any) { fmt.Fprintf(w, "%-12s %s\n", k, fmt.Sprintf(format, a...)) }
	row("node", "%s (%s)", st.Node, st.Role)
	row("volume", "%s, %s, %d B blocks", st.VolumeUUID, Bytes(uint64(st.SizeBytes)), st.BlockSize)
	link := st.Link
	if st.Peer != "" {
		link += " to " + st.Peer
	}
	if st.PeerNode != "" {
		link += " (node " + st.PeerNode + ")"
	}
	if st.LinkSecurity != "" {
		link += ", " + st.LinkSecurity
	}
	row("link", "%s", link)
	repl := st.Replication
	if st.Replication == "replicating" {
		repl += " (" + st.Mode + ")"
	}
	if st.ResyncTotal > 0 && st.Replication == blockdev.StateResyncing {
		repl += fmt.Sprintf(" %.1f%% (%d of %d blocks)", 100*float64(st.ResyncDone)/float64(st.ResyncTotal), st.ResyncDone, st.ResyncTotal)
		if st.ResyncRate > 0 {
			repl += fmt.Sprintf(", %s/s, ETA %.0f s", Bytes(uint64(st.ResyncRate)), st.ResyncETASec)
		}
		if st.ResyncYielding {
			repl += ", slowed to the minimum rate: the application writes"
		}
	}
	if st.Replication == blockdev.StateCatchUp {
		repl += fmt.Sprintf(" records %d to %d", st.CatchUpFrom, st.CatchUpTo)
	}
	row("replication", "%s", repl)
	if st.JournalCapacity > 0 {
		j := fmt.Sprintf("%s of %s used, %d records behind, newest %d, peer durable up to %d",
			Bytes(uint64(st.JournalUsed)), Bytes(uint64(st.JournalCapacity)), st.JournalLag, st.JournalNewest, st.PeerDurableSeq)
		if st.Throttled > 0 {
			j += fmt.Sprintf(", %d writers waiting for room", st.Throttled)
		}
		row("journal", "%s", j)
		if st.LastCatchUp != "" {
			row("catch-up", "last by %s", st.LastCatchUp)
		}
		if st.JournalOverflow || st.FallbackReason != "" {
			row("fallback", "%s", st.FallbackReason)
		}
	}
	if st.Transition != "" {
		row("transition", "%s", st.Transition)
	}
	if st.VerifyTotal > 0 {
		row("verify", "%.1f%% (%d of %d blocks)", 100*float64(st.VerifyDone)/float64(st.VerifyTotal), st.VerifyDone, st.VerifyTotal)
	}
	disk := st.Disk
	if st.PeerDisk != "" {
		disk += ", peer " + st.PeerDisk
	}
	row("disk", "%s", disk)
	row("generation", "%s", st.Generations)
	if st.NamedPrimary != "" || st.Epoch != 0 {
		leader := st.RaftLeader
		if leader == "" {
			leader = "none (no quorum?)"
		}
		epoch := fmt.Sprintf("epoch %d", st.Epoch)
		if st.ServingEpoch != 0 && st.ServingEpoch != st.Epoch {
			epoch += fmt.Sprintf(" (this host still serves epoch %d: deposed, stepping down)", st.ServingEpoch)
		}
		row("control", "%s, primary %s, raft leader %s", epoch, st.NamedPrimary, leader)
	}
	if st.NoControlPlane {
		row("control", "NONE: role from --role only, no split-brain protection")
	}
	if st.Role == RolePrimary {
		row("dirty", "%d blocks (%s)", st.DirtyBlocks, Bytes(st.DirtyBytes))
		row("shipped", "%d writes, %s, %d flushes", st.WritesShipped, Bytes(st.BytesShipped), st.FlushesShipped)
		row("window", "%d of %d writes in flight", st.WindowInUse, st.WindowSize)
		if st.Export != "" {
			row("export", "%s", st.Export)
		}
		if len(st.LoopDevices) > 0 {
			row("loop", "%s", strings.Join(st.LoopDevices, ", "))
		}
	} else {
		row("applied", "%d writes, %s, up to seq %d, %d pending", st.WritesApplied, Bytes(st.BytesApplied), st.AppliedSeq, st.ApplyPending)
		if st.ApplyFailures > 0 {
			row("failures", "%d writes failed to apply", st.ApplyFailures)
		}
		if st.BehindBlocks > 0 {
			row("behind", "%d blocks written here as primary may differ; the primary resyncs them", st.BehindBlocks)
		}
		if st.RejectedConns > 0 {
			row("rejected", "%d connections (see the log)", st.RejectedConns)
		}
	}
	if st.LastError != "" {
		row("last error", "%s", st.LastError)
	}
	if l := st.LDAP; l != nil {
		switch {
		case !l.Known:
			row("ldap", "%s: not probed yet", l.URL)
		case l.Up:
			row("ldap", "%s up, last probe %.1f ms", l.URL, l.LastLatencyMs)
		default:
			row("ldap", "%s DOWN after %d failed probes: %s", l.URL, l.ConsecutiveFailures, l.LastError)
		}
	}
	if st.Agent != nil {
		st.Agent.WriteText(w)
	}
}

// Bytes formats n with a binary unit.
func Bytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
