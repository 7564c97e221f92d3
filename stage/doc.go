// Package stage is a resync target's redo staging area: it keeps the
// target of a bitmap resync crash-consistent at every moment
// (docs/design.md, "A resync target that stays usable").
//
// A bitmap resync copies blocks in block order, not in the order they were
// written, so a volume it is half done with is a mix no file system can
// trust. While a resync runs, an Area (a blockdev.Device over the volume)
// writes every block the primary sends, resync copies and the
// application's writes alike, to a log file beside the volume instead of
// the volume, which keeps the data it had when it last applied the
// primary's writes in order. Reads see the staged blocks over the volume's.
// When the resync completed, Commit makes the log durable and marks it
// committed in one header write: from then on the log is the truth, and it
// is copied into the volume (the apply), replayed from the start after a
// crash. Until the commit the volume is as it was; after it, the staged
// blocks win. Discard drops an uncommitted log: the volume never changed.
//
// The log file:
//
//	0     header slot 0 (512 bytes)
//	512   header slot 1 (512 bytes); the valid slot with the higher
//	      sequence number holds the state, so that a torn header write
//	      leaves the other one
//	4096  records, appended
//
// A header (big-endian):
//
//	0   magic "LDMSTAGE"
//	8   version (1)
//	10  state: 1 staging, 2 committed
//	11  reserved, 0
//	12  block size in bytes
//	16  sequence number
//	24  volume size in bytes
//	32  as of: the time the volume's data is consistent as of (unix ns)
//	40  began (unix ns); every record of this log carries it
//	48  committed (unix ns; 0 while staging)
//	56  length of the source's node ID, then the ID (at most 64 bytes)
//	124 CRC32C (Castagnoli) of bytes 0 to 123
//
// A record is a 32-byte header and, for data, count blocks:
//
//	0   magic "LDSR"
//	4   kind: 1 data, 2 zeros (a trim)
//	5   reserved, 0 (3 bytes)
//	8   count of blocks
//	12  first block
//	16  began, as in the header
//	24  reserved, 0
//	28  CRC32C of bytes 0 to 27
//
// The data of a record is not checksummed: a block staged once is
// rewritten in place by later writes, as the volume's own block would be,
// so that the log needs at most one copy of each block the resync touches.
// The scan at Open stops at the first record that does not decode; a
// record torn by a crash is after the last flush, and the primary sends
// it again (it persists its progress only behind what the target holds).
package stage
