// Package agent is ldmirror's LDAP agent: one per data host, inside that
// host's daemon, it watches the directory service and drives role changes
// through the control plane (package cluster), so that the directory runs
// on exactly the host the control plane names primary.
//
// The agent is a state machine run by one goroutine (the states are the
// State* constants, shown in Status):
//
//   - When the control plane names this host primary in a new epoch (its
//     own failover, an operator's promote, a swap toward it, or at start),
//     it waits for the volume (Volume.AwaitPrimary) and runs the promote
//     hooks in order: attach, mount, start the directory server, move an
//     address. A failing hook stops the sequence and puts the agent in
//     StateFailed, where it asks for no role change until Retry.
//   - When this host loses the role while it runs, it runs the demote
//     hooks (stop the directory server, unmount, detach); it also runs them
//     once at start when it is secondary.
//   - While secondary it probes the primary's directory server (peer_url).
//     After Threshold failed probes in a row it asks the control plane to
//     fail over to this host (Cluster.Failover) — only if this host's disk
//     is uptodate, min_swap_interval has passed since the last role change
//     it saw and since it started (no flapping), and its own ready_check
//     passes. Each reason not to fail over is logged once per outage.
//   - Each agent reports its readiness to the control plane when it
//     changes (Cluster.ReportReady); with failback "auto", the primary
//     hands the service back to the preferred host (Swap) once that host
//     has been uptodate and ready for failback_after, and never toward a
//     host that is not ready.
//
// Hooks are shell commands (/bin/sh -c) with a timeout, run in their own
// process group, which is killed at the timeout; their output is logged
// line by line and its tail kept for status. They get LDMIRROR_NODE,
// LDMIRROR_PEER, LDMIRROR_EPOCH, LDMIRROR_ROLE, LDMIRROR_EXPORT,
// LDMIRROR_DIR, LDMIRROR_SEQUENCE and LDMIRROR_HOOK. docs/agent.md is the
// operator's reference: configuration, hooks and runbooks.
package agent
