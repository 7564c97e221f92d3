// Package scoreboard is the durable memory of which blocks of a mirrored
// volume may differ from the peer: what DRBD calls the on-disk bitmap plus the
// activity log, and SNDR the scoreboard.
//
// It keeps two things in one metadata file per volume (and peer):
//
//   - the out-of-sync map: blocks known to differ (a write that did not reach
//     the peer, or was written while disconnected). It is changed in memory
//     and persisted lazily by a background cleaner into one of two slots, so
//     a torn write of one slot leaves the other.
//   - the activity log: the set of "hot" extents (4 MiB by default) that may
//     have writes in flight. An extent is made durably hot before the first
//     write into it is issued, and only then; later writes into a hot extent
//     cost no I/O. Extents cool lazily: one leaves the log only when room is
//     needed, no write into it is in flight, and the out-of-sync map that
//     covers its blocks is durable.
//
// Together they give the crash rule of invariant 3: after a crash at any
// instant, the blocks that may differ between the hosts are a subset of
// Recovered() = durable out-of-sync map ∪ blocks of the hot extents.
//
// The write path calls BeginWrite before issuing the local write and EndWrite
// once the write is done on both hosts or has failed. Concurrent BeginWrite
// calls that need new extents share one activity-log transaction and one
// fdatasync (group commit), so intent is never one fsync per write.
//
// docs/scoreboard.md describes the on-disk format and the tunables.
package scoreboard
