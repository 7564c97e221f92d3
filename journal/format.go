package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
)

// On-disk geometry.
const (
	// SlotSize is the size of one superblock slot; the ring starts after two.
	SlotSize = 4096
	// RingStart is the file offset of the ring.
	RingStart = 2 * SlotSize
	// HeaderSize is the size of a record header.
	HeaderSize = 40
	// MaxData is the most data one write record carries (the mirror splits
	// larger writes, as the transport does).
	MaxData = 1 << 20
	// MinCapacity is the smallest ring. A record larger than the ring
	// cannot be appended (ErrBadRecord).
	MinCapacity = 64 << 10
	// DefaultCapacity is the ring size when none is configured.
	DefaultCapacity = 64 << 20
)

const (
	recordMagic uint32 = 0x4c444a52 // "LDJR"
	superMagic  uint32 = 0x4c444a53 // "LDJS"
	// version 2 added the authority, the stop flag and its reason, the
	// clean-close flag and the boot ID. A version 1 superblock is read as
	// a stopped journal: its writer did not append before the local write,
	// so its records cannot be redone (docs/journal.md).
	version   uint32 = 2
	version1  uint32 = 1
	superSize        = 512
	super1Len        = 64 // bytes of a version 1 superblock
	// MaxReason is the longest reason kept in the superblock, in bytes.
	MaxReason = 256
)

// NoAuthority is the authority of a journal from which no peer may be
// caught up: a bitmap resync must bring the peer up to date first.
const NoAuthority = math.MaxUint64

// superblock flags
const (
	flagStopped uint32 = 1 << iota
	flagClean
)

// Kind is what a record does to the volume.
type Kind uint8

// Record kinds.
const (
	// KindWrite writes Data at Offset.
	KindWrite Kind = iota + 1
	// KindTrim discards Length bytes at Offset.
	KindTrim
	// KindFlush is a barrier: the writes before it were made durable by the
	// application before any write after it was issued.
	KindFlush
	kindEnd
)

// String names the kind.
func (k Kind) String() string {
	switch k {
	case KindWrite:
		return "write"
	case KindTrim:
		return "trim"
	case KindFlush:
		return "flush"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Record is one journaled operation.
type Record struct {
	Seq    uint64 // assigned by Append; ignored on input
	Kind   Kind
	Offset int64
	Length int64  // bytes written or trimmed; 0 for a flush
	Data   []byte // a write's data (Length bytes)

	buf *[]byte // the pooled buffer Data points into (see Journal.Recycle)
}

// Errors.
var (
	// ErrCorrupt reports a record or superblock that fails its checks where
	// a valid one must be; the message names the file offset.
	ErrCorrupt = errors.New("journal corrupt")
	// ErrNotJournal reports a file without a valid journal superblock.
	ErrNotJournal = errors.New("not a journal file (no valid superblock)")
	// ErrFull reports an append that does not fit in the ring now.
	ErrFull = errors.New("journal full")
	// ErrTruncated reports a sequence number the journal no longer holds.
	ErrTruncated = errors.New("sequence number no longer in the journal")
	// ErrClosed reports use of a closed journal.
	ErrClosed = errors.New("journal closed")
	// ErrBadRecord reports a record that cannot be appended as given.
	ErrBadRecord = errors.New("invalid journal record")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// header is a decoded record header.
type header struct {
	kind   Kind
	open   uint32
	sum    uint32
	seq    uint64
	offset int64
	length int64
}

// dataLen is the number of data bytes that follow the header.
func (h *header) dataLen() int64 {
	if h.kind == KindWrite {
		return h.length
	}
	return 0
}

// size is the record's size in the ring.
func (h *header) size() uint64 { return HeaderSize + uint64(h.dataLen()) }

// check validates a record given to Append.
func (r *Record) check() error {
	switch r.Kind {
	case KindWrite:
		if len(r.Data) == 0 || len(r.Data) > MaxData {
			return fmt.Errorf("%w: write of %d bytes, must be 1 to %d", ErrBadRecord, len(r.Data), MaxData)
		}
		r.Length = int64(len(r.Data))
	case KindTrim:
		if r.Length <= 0 || r.Data != nil {
			return fmt.Errorf("%w: trim of %d bytes", ErrBadRecord, r.Length)
		}
	case KindFlush:
		if r.Offset != 0 || r.Length != 0 || r.Data != nil {
			return fmt.Errorf("%w: flush with a range or data", ErrBadRecord)
		}
	default:
		return fmt.Errorf("%w: %s", ErrBadRecord, r.Kind)
	}
	if r.Offset < 0 || r.Offset > math.MaxInt64-r.Length {
		return fmt.Errorf("%w: %d bytes at offset %d", ErrBadRecord, r.Length, r.Offset)
	}
	return nil
}

// putHeader encodes a header with a zero checksum into b.
func putHeader(b []byte, kind Kind, open uint32, seq uint64, off, length int64) {
	binary.BigEndian.PutUint32(b[0:4], recordMagic)
	b[4], b[5], b[6], b[7] = byte(kind), 0, 0, 0
	binary.BigEndian.PutUint32(b[8:12], open)
	binary.BigEndian.PutUint32(b[12:16], 0)
	binary.BigEndian.PutUint64(b[16:24], seq)
	binary.BigEndian.PutUint64(b[24:32], uint64(off))
	binary.BigEndian.PutUint64(b[32:40], uint64(length))
}

// decodeHeader parses and validates a record header (not its checksum).
func decodeHeader(b []byte) (header, error) {
	var h header
	if len(b) < HeaderSize {
		return h, fmt.Errorf("header of %d bytes", len(b))
	}
	if m := binary.BigEndian.Uint32(b); m != recordMagic {
		return h, fmt.Errorf("bad magic %#08x", m)
	}
	h.kind = Kind(b[4])
	if h.kind == 0 || h.kind >= kindEnd {
		return h, fmt.Errorf("unknown kind %d", b[4])
	}
	if b[5] != 0 || b[6] != 0 || b[7] != 0 {
		return h, errors.New("reserved bytes not zero")
	}
	h.open = binary.BigEndian.Uint32(b[8:12])
	h.sum = binary.BigEndian.Uint32(b[12:16])
	h.seq = binary.BigEndian.Uint64(b[16:24])
	off, n := binary.BigEndian.Uint64(b[24:32]), binary.BigEndian.Uint64(b[32:40])
	if off > math.MaxInt64 || n > math.MaxInt64-off {
		return h, fmt.Errorf("range of %d bytes at %d", n, off)
	}
	h.offset, h.length = int64(off), int64(n)
	switch h.kind {
	case KindWrite:
		if n == 0 || n > MaxData {
			return h, fmt.Errorf("write of %d bytes", n)
		}
	case KindTrim:
		if n == 0 {
			return h, errors.New("empty trim")
		}
	case KindFlush:
		if off != 0 || n != 0 {
			return h, errors.New("flush with a range")
		}
	}
	return h, nil
}

// idSum starts a record checksum: every record's checksum covers the
// journal's identity, so a record left over from another journal in the
// same file never passes.
func idSum(id uint64) uint32 {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], id)
	return crc32.Update(0, castagnoli, b[:])
}

// recordSum is the checksum of a header, whose checksum field must be
// zero, and its data.
func recordSum(seed uint32, hdr, data []byte) uint32 {
	return crc32.Update(crc32.Update(seed, castagnoli, hdr[:HeaderSize]), castagnoli, data)
}

// verify checks a record's checksum; hdr's checksum field is zeroed.
func verify(seed uint32, h *header, hdr, data []byte) bool {
	binary.BigEndian.PutUint32(hdr[12:16], 0)
	return recordSum(seed, hdr, data) == h.sum
}

// superblock is the content of one slot:
//
//	0   magic "LDJS", version (2)
//	8   gen, id, capacity, tailSeq, tailPos, durable (8 bytes each)
//	56  open (4 bytes), flags (4: 1 stopped, 2 closed cleanly)
//	64  authority (8), boot ID (16), reason length (2), reason (MaxReason)
//	508 crc32c of bytes 0 to 507
type superblock struct {
	gen       uint64 // slot write counter: the valid slot with the higher one wins
	id        uint64
	capacity  uint64
	tailSeq   uint64 // oldest record kept (== the next seq when empty)
	tailPos   uint64 // its logical ring position
	durable   uint64 // every record up to this seq was durable when written
	open      uint32 // opens so far
	stopped   bool   // journaling stopped: the local disk has writes no record holds
	clean     bool   // closed, with every record durable, and not opened since
	authority uint64 // see Journal.Authority
	boot      [16]byte
	reason    string // why stopped, or why the authority is NoAuthority
}

const superCRC = superSize - 4

func (s *superblock) encode(b []byte) {
	clear(b[:superSize])
	binary.BigEndian.PutUint32(b[0:4], superMagic)
	binary.BigEndian.PutUint32(b[4:8], version)
	binary.BigEndian.PutUint64(b[8:16], s.gen)
	binary.BigEndian.PutUint64(b[16:24], s.id)
	binary.BigEndian.PutUint64(b[24:32], s.capacity)
	binary.BigEndian.PutUint64(b[32:40], s.tailSeq)
	binary.BigEndian.PutUint64(b[40:48], s.tailPos)
	binary.BigEndian.PutUint64(b[48:56], s.durable)
	binary.BigEndian.PutUint32(b[56:60], s.open)
	var flags uint32
	if s.stopped {
		flags |= flagStopped
	}
	if s.clean {
		flags |= flagClean
	}
	binary.BigEndian.PutUint32(b[60:64], flags)
	binary.BigEndian.PutUint64(b[64:72], s.authority)
	copy(b[72:88], s.boot[:])
	reason := s.reason[:min(len(s.reason), MaxReason)]
	binary.BigEndian.PutUint16(b[88:90], uint16(len(reason)))
	copy(b[90:90+MaxReason], reason)
	binary.BigEndian.PutUint32(b[superCRC:superSize], crc32.Checksum(b[:superCRC], castagnoli))
}

func decodeSuper(b []byte) (superblock, error) {
	var s superblock
	if len(b) < superSize {
		return s, errors.New("short superblock")
	}
	if binary.BigEndian.Uint32(b[0:4]) != superMagic {
		return s, errors.New("bad superblock magic")
	}
	switch v := binary.BigEndian.Uint32(b[4:8]); v {
	case version:
		if crc32.Checksum(b[:superCRC], castagnoli) != binary.BigEndian.Uint32(b[superCRC:superSize]) {
			return s, errors.New("superblock checksum mismatch")
		}
		flags := binary.BigEndian.Uint32(b[60:64])
		if flags&^(flagStopped|flagClean) != 0 {
			return s, fmt.Errorf("unknown superblock flags %#x", flags)
		}
		s.stopped, s.clean = flags&flagStopped != 0, flags&flagClean != 0
		s.authority = binary.BigEndian.Uint64(b[64:72])
		copy(s.boot[:], b[72:88])
		n := int(binary.BigEndian.Uint16(b[88:90]))
		if n > MaxReason {
			return s, fmt.Errorf("superblock reason of %d bytes", n)
		}
		s.reason = string(b[90 : 90+n])
	case version1:
		if crc32.Checksum(b[:super1Len-4], castagnoli) != binary.BigEndian.Uint32(b[super1Len-4:super1Len]) {
			return s, errors.New("superblock checksum mismatch")
		}
		s.stopped, s.authority = true, NoAuthority
		s.reason = "journal written by an older ldmirror (format 1), which wrote locally before appending: it cannot be redone"
	default:
		return s, fmt.Errorf("superblock version %d, this build reads %d and %d", v, version1, version)
	}
	s.gen = binary.BigEndian.Uint64(b[8:16])
	s.id = binary.BigEndian.Uint64(b[16:24])
	s.capacity = binary.BigEndian.Uint64(b[24:32])
	s.tailSeq = binary.BigEndian.Uint64(b[32:40])
	s.tailPos = binary.BigEndian.Uint64(b[40:48])
	s.durable = binary.BigEndian.Uint64(b[48:56])
	s.open = binary.BigEndian.Uint32(b[56:60])
	if s.capacity < MinCapacity || s.capacity > 1<<40 {
		return s, fmt.Errorf("ring capacity %d out of range", s.capacity)
	}
	return s, nil
}
