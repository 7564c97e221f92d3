// Package journal is the ordered, durable write log of an async mirror: a
// ring of records in one preallocated file, each record one write, trim or
// flush barrier of the volume, numbered by a sequence number that never
// goes back (across restarts of the process, and across role changes with
// Advance).
//
// The file starts with two 4 KiB superblock slots, written in turn and each
// checksummed, so that a crash in the middle of writing one leaves the
// other: they hold the journal's identity, the ring capacity, the oldest
// record kept (its sequence number and ring position), the highest sequence
// number known to be durable, and a counter of opens; and what its user
// needs to resume it after a crash: the authority (the oldest position from
// which a peer may be caught up, or NoAuthority), whether journaling
// stopped (Stop: the local disk got writes that no record holds) and why,
// whether it was closed cleanly, and the boot ID of the host when it was
// opened. The ring follows.
//
// A record is a 40-byte header followed by the data of a write:
//
//	0  magic   "LDJR"
//	4  kind    1 write, 2 trim, 3 flush
//	5  reserved, must be 0 (3 bytes)
//	8  open    the open counter of the session that wrote it
//	12 crc32c  Castagnoli, over the journal id, the header (this field zero)
//	           and the data
//	16 seq     sequence number
//	24 offset  byte offset on the volume
//	32 length  bytes written (the data that follows) or trimmed
//
// Records are contiguous in the ring and may wrap around its end. Open
// walks the records from the oldest one: a record that fails its checksum
// at or before the durable sequence number is corruption, reported with its
// file offset (ErrCorrupt); after it, it is the torn tail of a crash and is
// dropped with everything behind it.
//
// Appends are written concurrently and made durable by group commit: Sync
// runs one fdatasync for every caller waiting at that moment. An append
// returns only once every record before its own is written too, so that
// after a crash of the process the records whose appends returned are all
// found. A record appended with AppendHeld is not shipped (no cursor
// returns it) and not freed until Release: its writer applies it to the
// local disk in between. Truncate frees records once the peer made them
// durable; it persists the new oldest record before the space is reused.
// The superblock is made durable at Open, Close, Truncate, Stop, Resume and
// SetAuthority only, never per record, and by itself (a write with
// RWF_DSYNC), not with the ring's records. A cursor that reaches a write
// record soon after its append gets the buffer it was written from (the
// handoff) instead of reading it back; see handoff.go.
package journal
