// Package cluster is ldmirror's control plane: a raft group
// (github.com/hashicorp/raft) of three voters — the two data hosts of a
// mirrored volume and a witness with no volume — that decides who is
// primary, so that it is never a guess.
//
// The replicated state is one VolumeState: the primary's node ID, the epoch
// (a counter incremented on every role change, with the raft index of the
// entry that granted it), and per host its disk state (uptodate, outdated,
// inconsistent; diskless for a witness) and last acknowledged sequence
// number. It changes only through commands applied by the FSM, whose rules
// are checked inside Apply so that every member reaches the same verdict:
//
//   - a promotion is refused unless the candidate's disk is uptodate, unless
//     forced, which is recorded with the operator's reason and counted;
//   - there is at most one primary, and a witness is never primary;
//   - the epoch only grows; a primary that is displaced is marked outdated;
//   - commands that act for a primary (MarkOutdated, Demote, TransferPrimary,
//     Failover) and disk-state reports carry the epoch their sender believes
//     current, and are refused with ErrStaleEpoch when it is not;
//   - an outdated host stays outdated until SetDiskState(uptodate) after a
//     resync.
//
// Fencing (docs/invariants.md, invariant 4) is built on this: a primary writes only
// while it holds the current epoch, every replication frame carries it, and a
// primary that loses its peer commits MarkPeerOutdated before acknowledging
// more writes. That commit needs a quorum (two of the three voters), so a
// primary cut off from both its peer and the witness gets ErrNoQuorum and
// must suspend I/O instead of diverging.
//
// Raft traffic runs over TLS 1.3 on one TCP port per member, mutually
// authenticated: every member presents its own certificate of the pair's
// CA (package pki), which names its node ID and role (see stream.go), so a
// host without one can neither join nor talk raft. Commands submitted on a
// follower are forwarded to the leader over the same port; the leader
// stamps each command with the member whose certificate sent it, and the
// FSM authorizes the command by that sender (command.go, authorize): a
// member speaks only for itself, the primary also for its peer's disk, and
// a witness never for a data host — it votes and passes on its operator's
// promote, demote, remove and failover. Raft itself trusts its voters to
// follow the protocol: see docs/design.md, "Security", for what a member
// whose host is compromised can still do.
//
// A Cluster is opened with Open, bootstraps a new group with Bootstrap or
// joins one with Join, and is closed with Close, which waits for every
// goroutine it started.
package cluster
