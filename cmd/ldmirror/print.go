package main

import (
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/export"
	"github.com/ldmirror/ldmirror/internal/bytesize"
	"github.com/ldmirror/ldmirror/ldapagent/agent"
	"github.com/ldmirror/ldmirror/mirror"
	"github.com/ldmirror/ldmirror/node"
	"github.com/ldmirror/ldmirror/volume"
)

// writeStatus prints a host's status for an operator.
func writeStatus(w io.Writer, st node.Status) {
	row := func(k, format string, a ...any) { fmt.Fprintf(w, "%-12s %s\n", k, fmt.Sprintf(format, a...)) }
	row("node", "%s (%s)", st.Node, st.Role)
	row("volume", "%s, %s, %d B blocks", st.VolumeUUID, bytesize.Format(uint64(st.SizeBytes)), st.BlockSize)
	link := string(st.Link)
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
	row("replication", "%s", replicationText(st))
	if st.JournalCapacity > 0 {
		j := fmt.Sprintf("%s of %s used, %d records behind, newest %d, peer durable up to %d",
			bytesize.Format(uint64(st.JournalUsed)), bytesize.Format(uint64(st.JournalCapacity)), st.JournalLag, st.JournalNewest, st.PeerDurableSeq)
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
	if st.ResyncTarget != "" {
		row("resync", "%s", st.ResyncTarget)
	}
	if st.PeerStage != "" {
		row("peer resync", "%s", st.PeerStage)
	}
	if st.VerifyTotal > 0 {
		row("verify", "%.1f%% (%d of %d blocks)", 100*float64(st.VerifyDone)/float64(st.VerifyTotal), st.VerifyDone, st.VerifyTotal)
	}
	disk := string(st.Disk)
	if st.PeerDisk != "" {
		disk += ", peer " + string(st.PeerDisk)
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
	if st.Role == cluster.RolePrimary {
		row("dirty", "%d blocks (%s)", st.DirtyBlocks, bytesize.Format(st.DirtyBytes))
		row("shipped", "%d writes, %s, %d flushes", st.WritesShipped, bytesize.Format(st.BytesShipped), st.FlushesShipped)
		row("window", "%d of %d writes in flight", st.WindowInUse, st.WindowSize)
		if st.Export != "" {
			row("export", "%s", st.Export)
		}
		if len(st.LoopDevices) > 0 {
			row("loop", "%s", strings.Join(st.LoopDevices, ", "))
		}
	} else {
		row("applied", "%d writes, %s, up to seq %d, %d pending", st.WritesApplied, bytesize.Format(st.BytesApplied), st.AppliedSeq, st.ApplyPending)
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
		writeAgentStatus(w, *st.Agent)
	}
}

// replicationText is the replication row: the state, and a resync's
// progress on its source and its target alike.
func replicationText(st node.Status) string {
	repl := string(st.Replication)
	if st.Replication == mirror.StateReplicating {
		repl += " (" + st.Mode + ")"
	}
	if st.ResyncTotal > 0 && (st.Replication == mirror.StateResyncing || st.Replication == node.ReplicationResyncTarget) {
		repl += fmt.Sprintf(" %.1f%% (%d of %d blocks)", 100*float64(st.ResyncDone)/float64(st.ResyncTotal), st.ResyncDone, st.ResyncTotal)
		if st.ResyncRate > 0 {
			repl += fmt.Sprintf(", %s/s, ETA %.0f s", bytesize.Format(uint64(st.ResyncRate)), st.ResyncETASec)
		}
		if st.ResyncYielding {
			repl += ", slowed to the minimum rate: the application writes"
		}
	}
	if st.Replication == mirror.StateCatchUp {
		repl += fmt.Sprintf(" records %d to %d", st.CatchUpFrom, st.CatchUpTo)
	}
	return repl
}

// summaryLine is a host's state in one line: systemd's STATUS=, `status`
// of every resource, `status --watch` off a terminal.
func summaryLine(st node.Status) string {
	role := string(st.Role)
	if role == "" {
		role = "no role yet"
	}
	line := fmt.Sprintf("%s %s, %s", st.Node, role, st.Link)
	if st.PeerNode != "" {
		line += " to " + st.PeerNode
	}
	line += ", " + replicationText(st) + ", disk " + string(st.Disk)
	if st.PeerDisk != "" {
		line += ", peer " + string(st.PeerDisk)
	}
	if st.Epoch != 0 {
		line += fmt.Sprintf(", epoch %d", st.Epoch)
	}
	if st.Transition != "" {
		line += "; " + st.Transition
	}
	return line
}

// writeAgentStatus prints the LDAP agent's status, in the style of writeStatus.
func writeAgentStatus(w io.Writer, st agent.Status) {
	row := func(k, format string, a ...any) { fmt.Fprintf(w, "%-12s %s\n", k, fmt.Sprintf(format, a...)) }
	row("agent", "%s (%s, epoch %d, primary %q)", st.State, st.Role, st.Epoch, st.Primary)
	if st.Hold != "" {
		row("hold", "%s", st.Hold)
	}
	if st.Service.URL != "" {
		s := "down"
		switch {
		case !st.Service.Known:
			s = "unknown"
		case st.Service.Up:
			s = "up"
		}
		line := fmt.Sprintf("%s %s: %s, %d failed in a row, %.1f ms", st.Service.Target, st.Service.URL, s,
			st.Service.ConsecutiveFailures, st.Service.LastLatencyMs)
		if st.Service.LastError != "" && !st.Service.Up {
			line += " (" + st.Service.LastError + ")"
		}
		row("service", "%s", line)
	}
	ready := "not ready"
	if st.Ready {
		ready = "ready"
	}
	if !st.ReadyReported {
		ready += " (not yet reported)"
	}
	row("readiness", "%s: %s", ready, st.ReadyDetail)
	fb := st.Failback
	if st.Preferred != "" {
		fb += " to " + st.Preferred
	}
	row("failback", "%s", fb)
	change := func(k string, n uint64, c *agent.RoleChange) {
		if c == nil {
			return
		}
		s := fmt.Sprintf("%d; last %s→%s at %s: %s", n, c.From, c.To, c.At.Format(time.RFC3339), c.Reason)
		if c.Error != "" {
			s += " — failed: " + c.Error
		}
		row(k, "%s", s)
	}
	change("failovers", st.Failovers, st.LastFailover)
	change("swaps", st.Swaps, st.LastSwap)
	for _, h := range st.LastHooks {
		res := "ok"
		if !h.OK() {
			res = h.Error
		}
		row("hook", "%s/%s: %s (%.0f ms)", h.Sequence, h.Name, res, h.DurationMs)
	}
	if f := st.Failure; f != nil {
		row("FAILED", "%s hook %q: %s (epoch %d); fix the cause, then retry the agent", f.Sequence, f.Hook, f.Error, f.Epoch)
		for _, l := range f.Tail {
			row("", "| %s", strings.TrimRight(l, " "))
		}
	}
}

// writeLeftovers prints what a dead daemon left in dir and the commands
// that clear it.
func writeLeftovers(w io.Writer, dir string, l export.Leftovers) {
	fmt.Fprintf(w, "no daemon runs on %s; left over from the last one:\n", dir)
	if len(l.Loops) > 0 {
		fmt.Fprintf(w, "  loop device %s bound to the export\n", strings.Join(l.Loops, ", "))
	}
	for _, m := range l.Mounts {
		fmt.Fprintf(w, "  a file system on it mounted on %s\n", m)
	}
	if l.DeadMount {
		fmt.Fprintf(w, "  the dead FUSE export %s\n", filepath.Join(dir, volume.ExportDir))
	}
	fmt.Fprintln(w, "to clear it:")
	for _, m := range l.Mounts {
		fmt.Fprintf(w, "  umount %s\n", m)
	}
	fmt.Fprintf(w, "  ldmirror detach --dir %s\n", dir)
}
