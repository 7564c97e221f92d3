package scoreboard

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math/bits"

	"github.com/ldmirror/ldmirror/bitmap"
)

// FormatVersion is the on-disk format this package writes and reads.
const FormatVersion = 1

// Layout constants. Everything is a multiple of pageSize so that every
// record is written with one aligned write of whole sectors.
const (
	pageSize = 4096

	superMagic = "LDMSCORE"
	txnMagic   = 0x4c44414c // "LDAL"
	slotMagic  = "LDMOOSMP"

	// MaxHotExtents is the largest hot set: one activity-log transaction is
	// one 4 KiB page holding the whole set.
	MaxHotExtents = (pageSize - txnHeaderSize - 4) / 4

	txnHeaderSize  = 32
	slotHeaderSize = 64
)

// Defaults for Geometry and Options.
const (
	DefaultExtentSize = 4 << 20
	DefaultHotExtents = 512
	DefaultALSlots    = 8
)

// Sentinel errors. Every error returned by this package that is about the
// metadata file wraps one of these and names the file.
var (
	// ErrCorrupt: the file is not a scoreboard, or a checksum or record is
	// bad where no older copy can stand in.
	ErrCorrupt = errors.New("scoreboard: corrupt metadata")
	// ErrVersion: the file was written in a format this build does not read.
	ErrVersion = errors.New("scoreboard: unsupported format version")
	// ErrGeometry: the geometry is invalid or differs from the recorded one.
	ErrGeometry = errors.New("scoreboard: geometry mismatch")
	// ErrClosed: the scoreboard was closed.
	ErrClosed = errors.New("scoreboard: closed")
	// ErrInUse: another Open or Create holds the file's lock.
	ErrInUse = errors.New("scoreboard: metadata file is open in another scoreboard")
	// ErrFailed: a metadata write failed earlier, so the on-disk state is
	// unknown and no write may begin.
	ErrFailed = errors.New("scoreboard: metadata write failed earlier")
	// ErrRange: an extent outside the volume, or with First > Last.
	ErrRange = errors.New("scoreboard: extent outside the volume")
	// ErrSpan: a write touches more extents than the activity log holds.
	ErrSpan = errors.New("scoreboard: write spans more extents than the activity log holds")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func checksum(p []byte) uint32 { return crc32.Checksum(p, castagnoli) }

// Geometry is the shape of the volume a scoreboard tracks. It is recorded in
// the superblock and must match at every Open.
type Geometry struct {
	// VolumeSize is the volume size in bytes.
	VolumeSize int64
	// BlockSize is the tracking granularity in bytes; it must match the
	// bitmap.Set of the volume. 0 means bitmap.DefaultBlockSize.
	BlockSize int
	// ExtentSize is the activity-log granularity in bytes: a power-of-two
	// multiple of BlockSize. 0 means DefaultExtentSize (4 MiB).
	ExtentSize int
}

func (g Geometry) withDefaults() Geometry {
	if g.BlockSize == 0 {
		g.BlockSize = bitmap.DefaultBlockSize
	}
	if g.ExtentSize == 0 {
		g.ExtentSize = DefaultExtentSize
	}
	return g
}

func (g Geometry) validate() error {
	pow2 := func(n int) bool { return n > 0 && n&(n-1) == 0 }
	switch {
	case g.VolumeSize <= 0:
		return fmt.Errorf("%w: volume size %d bytes must be positive", ErrGeometry, g.VolumeSize)
	case g.BlockSize < 512 || !pow2(g.BlockSize):
		return fmt.Errorf("%w: block size %d must be a power of two >= 512", ErrGeometry, g.BlockSize)
	case g.ExtentSize < g.BlockSize || !pow2(g.ExtentSize):
		return fmt.Errorf("%w: extent size %d must be a power of two >= block size %d", ErrGeometry, g.ExtentSize, g.BlockSize)
	case g.blocks() > 1<<32:
		return fmt.Errorf("%w: %d blocks of %d bytes exceed 2^32; use a larger block size", ErrGeometry, g.blocks(), g.BlockSize)
	}
	return nil
}

// blocks is the number of blocks in the volume.
func (g Geometry) blocks() uint64 {
	return (uint64(g.VolumeSize) + uint64(g.BlockSize) - 1) / uint64(g.BlockSize)
}

// extentShift converts a block number into an extent number.
func (g Geometry) extentShift() uint {
	return uint(bits.TrailingZeros(uint(g.ExtentSize)) - bits.TrailingZeros(uint(g.BlockSize)))
}

// extents is the number of activity-log extents in the volume.
func (g Geometry) extents() uint64 {
	per := uint64(1) << g.extentShift()
	return (g.blocks() + per - 1) / per
}

// layout is where each region lives in the metadata file.
type layout struct {
	alSlots  uint32 // activity-log ring length, in pages
	alOff    int64
	slotCap  int64 // bytes per out-of-sync map slot, header page included
	slotOffs [2]int64
	size     int64 // total file size
}

// mapCapacity is the largest portable roaring serialization of any subset of
// blocks once run-optimized (every container is then at most 8 KiB), so a
// slot can always hold the map: the cookie, a run flag bit and 8 bytes of
// key/cardinality/offset per 2^16-block chunk, and the containers.
func mapCapacity(blocks uint64) int64 {
	chunks := int64((blocks + 1<<16 - 1) >> 16)
	return 8 + (chunks+7)/8 + chunks*8 + chunks*(8192+2)
}

func roundUp(n, to int64) int64 { return (n + to - 1) / to * to }

func newLayout(g Geometry, alSlots uint32) layout {
	l := layout{alSlots: alSlots, alOff: pageSize}
	l.slotCap = pageSize + roundUp(mapCapacity(g.blocks()), pageSize)
	l.slotOffs[0] = l.alOff + int64(alSlots)*pageSize
	l.slotOffs[1] = l.slotOffs[0] + l.slotCap
	l.size = l.slotOffs[1] + l.slotCap
	return l
}

// superblock is page 0. It is written once, by Format, and never rewritten,
// so it cannot be torn by a later update.
type superblock struct {
	version uint32
	nonce   uint64 // random per Format: records of an earlier format are ignored
	geom    Geometry
	layout  layout
}

// Superblock byte layout (little endian); the CRC32C covers bytes [0, 4092).
//
//	0  8 magic "LDMSCORE"      36 4 activity-log slots
//	8  4 format version        40 8 activity-log offset
//	12 4 reserved (0)          48 8 map slot 0 offset
//	16 8 nonce                 56 8 map slot 1 offset
//	24 8 volume size           64 8 map slot capacity
//	32 2 log2 block size       72 8 file size
//	34 2 log2 extent size      4092 4 CRC32C
func (sb *superblock) encode(p []byte) {
	clear(p[:pageSize])
	le := binary.LittleEndian
	copy(p[0:8], superMagic)
	le.PutUint32(p[8:], sb.version)
	le.PutUint64(p[16:], sb.nonce)
	le.PutUint64(p[24:], uint64(sb.geom.VolumeSize))
	le.PutUint16(p[32:], uint16(bits.TrailingZeros(uint(sb.geom.BlockSize))))
	le.PutUint16(p[34:], uint16(bits.TrailingZeros(uint(sb.geom.ExtentSize))))
	le.PutUint32(p[36:], sb.layout.alSlots)
	le.PutUint64(p[40:], uint64(sb.layout.alOff))
	le.PutUint64(p[48:], uint64(sb.layout.slotOffs[0]))
	le.PutUint64(p[56:], uint64(sb.layout.slotOffs[1]))
	le.PutUint64(p[64:], uint64(sb.layout.slotCap))
	le.PutUint64(p[72:], uint64(sb.layout.size))
	le.PutUint32(p[pageSize-4:], checksum(p[:pageSize-4]))
}

// decodeSuperblock checks magic, checksum and version, then that the layout
// recorded is the one the recorded geometry implies.
func decodeSuperblock(p []byte) (superblock, error) {
	le := binary.LittleEndian
	var sb superblock
	if string(p[0:8]) != superMagic {
		return sb, fmt.Errorf("%w: no superblock magic (not a scoreboard, or overwritten)", ErrCorrupt)
	}
	if got, want := le.Uint32(p[pageSize-4:]), checksum(p[:pageSize-4]); got != want {
		return sb, fmt.Errorf("%w: superblock checksum %08x, computed %08x", ErrCorrupt, got, want)
	}
	sb.version = le.Uint32(p[8:])
	if sb.version != FormatVersion {
		return sb, fmt.Errorf("%w: file has format %d, this build reads %d", ErrVersion, sb.version, FormatVersion)
	}
	sb.nonce = le.Uint64(p[16:])
	bs, es := le.Uint16(p[32:]), le.Uint16(p[34:])
	if bs > 30 || es > 40 {
		return sb, fmt.Errorf("%w: superblock block/extent size exponents %d/%d out of range", ErrCorrupt, bs, es)
	}
	sb.geom = Geometry{VolumeSize: int64(le.Uint64(p[24:])), BlockSize: 1 << bs, ExtentSize: 1 << es}
	if err := sb.geom.validate(); err != nil {
		return sb, fmt.Errorf("%w: superblock geometry: %w", ErrCorrupt, err)
	}
	slots := le.Uint32(p[36:])
	if slots < 2 || slots > 1<<16 {
		return sb, fmt.Errorf("%w: superblock says %d activity-log slots", ErrCorrupt, slots)
	}
	sb.layout = newLayout(sb.geom, slots)
	want := sb.layout
	got := layout{alSlots: slots, alOff: int64(le.Uint64(p[40:])), slotCap: int64(le.Uint64(p[64:])),
		slotOffs: [2]int64{int64(le.Uint64(p[48:])), int64(le.Uint64(p[56:]))}, size: int64(le.Uint64(p[72:]))}
	if got != want {
		return sb, fmt.Errorf("%w: superblock layout %+v does not match its geometry (%+v)", ErrCorrupt, got, want)
	}
	return sb, nil
}

// txn is one activity-log transaction: the whole hot set after it commits.
// Writing the whole set (at most MaxHotExtents, one page) rather than deltas
// means recovery needs only the newest valid page, and a torn page falls back
// to the previous one, which is always a superset of what may be in flight.
//
// Byte layout (little endian); the CRC32C covers bytes [0, 4092).
//
//	0  4 magic "LDAL"        16 4 number of extents n
//	4  4 flags (1 = clean)   20 4 reserved
//	8  8 transaction number  24 8 nonce
//	32 4n extent numbers, ascending
type txn struct {
	number  uint64
	clean   bool
	extents []uint32
}

const txnClean = 1

func (t *txn) encode(p []byte, nonce uint64) {
	clear(p[:pageSize])
	le := binary.LittleEndian
	le.PutUint32(p[0:], txnMagic)
	if t.clean {
		le.PutUint32(p[4:], txnClean)
	}
	le.PutUint64(p[8:], t.number)
	le.PutUint32(p[16:], uint32(len(t.extents)))
	le.PutUint64(p[24:], nonce)
	for i, x := range t.extents {
		le.PutUint32(p[txnHeaderSize+4*i:], x)
	}
	le.PutUint32(p[pageSize-4:], checksum(p[:pageSize-4]))
}

// decodeTxn returns ok=false for a page that is not a transaction of this
// format (never written, torn, or left by an earlier format), and an error
// for a page that checksums but says something impossible.
func decodeTxn(p []byte, nonce, extents uint64) (t txn, ok bool, err error) {
	le := binary.LittleEndian
	if le.Uint32(p[0:]) != txnMagic || le.Uint64(p[24:]) != nonce || le.Uint32(p[pageSize-4:]) != checksum(p[:pageSize-4]) {
		return t, false, nil
	}
	t.number = le.Uint64(p[8:])
	t.clean = le.Uint32(p[4:])&txnClean != 0
	n := le.Uint32(p[16:])
	if n > MaxHotExtents {
		return t, false, fmt.Errorf("%w: activity-log transaction %d lists %d extents (max %d)", ErrCorrupt, t.number, n, MaxHotExtents)
	}
	t.extents = make([]uint32, n)
	for i := range t.extents {
		x := le.Uint32(p[txnHeaderSize+4*i:])
		if uint64(x) >= extents {
			return t, false, fmt.Errorf("%w: activity-log transaction %d lists extent %d of %d", ErrCorrupt, t.number, x, extents)
		}
		t.extents[i] = x
	}
	return t, true, nil
}

// Map slot header (little endian), at the start of the slot's first page;
// the payload (portable roaring serialization) starts at the next page. The
// header CRC32C covers bytes [0, 60).
//
//	0  8 magic "LDMOOSMP"    32 4 payload CRC32C
//	8  8 nonce               36 24 reserved
//	16 8 generation          60 4 header CRC32C
//	24 8 payload length
type slotHeader struct {
	nonce      uint64
	generation uint64
	length     uint64
	payloadCRC uint32
}

func (h *slotHeader) encode(p []byte) {
	clear(p[:pageSize])
	le := binary.LittleEndian
	copy(p[0:8], slotMagic)
	le.PutUint64(p[8:], h.nonce)
	le.PutUint64(p[16:], h.generation)
	le.PutUint64(p[24:], h.length)
	le.PutUint32(p[32:], h.payloadCRC)
	le.PutUint32(p[slotHeaderSize-4:], checksum(p[:slotHeaderSize-4]))
}

func decodeSlotHeader(p []byte, nonce uint64, capacity int64) (h slotHeader, ok bool) {
	le := binary.LittleEndian
	if string(p[0:8]) != slotMagic || le.Uint32(p[slotHeaderSize-4:]) != checksum(p[:slotHeaderSize-4]) {
		return h, false
	}
	h = slotHeader{nonce: le.Uint64(p[8:]), generation: le.Uint64(p[16:]), length: le.Uint64(p[24:]), payloadCRC: le.Uint32(p[32:])}
	if h.nonce != nonce || h.length > uint64(capacity-pageSize) {
		return h, false
	}
	return h, true
}
