package stage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"time"
)

// File layout (see doc.go).
const (
	headerSize   = 512
	headerUsed   = 128
	recordStart  = 4096
	recordHeader = 32
	version      = 1
	maxSource    = 64
)

var (
	headerMagic = [8]byte{'L', 'D', 'M', 'S', 'T', 'A', 'G', 'E'}
	castagnoli  = crc32.MakeTable(crc32.Castagnoli)
)

const recordMagic uint32 = 0x4c445352 // "LDSR"

// On-disk states of a log.
const (
	diskStaging   = 1
	diskCommitted = 2
)

// Record kinds.
const (
	kindData  = 1
	kindZeros = 2
)

// ErrFormat reports a header or record that does not decode.
var ErrFormat = errors.New("not a staging log record")

// header is a log's header.
type header struct {
	State     uint8 // diskStaging or diskCommitted
	BlockSize uint32
	Seq       uint64
	Size      int64
	AsOf      time.Time
	Began     int64 // unix ns; binds the records to this log
	Committed time.Time
	Source    string
}

// marshal encodes h into a header slot.
func (h header) marshal() []byte {
	b := make([]byte, headerSize)
	copy(b, headerMagic[:])
	binary.BigEndian.PutUint16(b[8:], version)
	b[10] = h.State
	binary.BigEndian.PutUint32(b[12:], h.BlockSize)
	binary.BigEndian.PutUint64(b[16:], h.Seq)
	binary.BigEndian.PutUint64(b[24:], uint64(h.Size))
	binary.BigEndian.PutUint64(b[32:], uint64(unixNano(h.AsOf)))
	binary.BigEndian.PutUint64(b[40:], uint64(h.Began))
	binary.BigEndian.PutUint64(b[48:], uint64(unixNano(h.Committed)))
	src := h.Source
	if len(src) > maxSource {
		src = src[:maxSource]
	}
	b[56] = byte(len(src))
	copy(b[57:], src)
	binary.BigEndian.PutUint32(b[124:], crc32.Checksum(b[:124], castagnoli))
	return b
}

// parseHeader decodes a header slot.
func parseHeader(b []byte) (header, error) {
	var h header
	switch {
	case len(b) < headerUsed:
		return h, fmt.Errorf("%w: header of %d bytes", ErrFormat, len(b))
	case [8]byte(b[:8]) != headerMagic:
		return h, fmt.Errorf("%w: bad header magic", ErrFormat)
	case binary.BigEndian.Uint32(b[124:]) != crc32.Checksum(b[:124], castagnoli):
		return h, fmt.Errorf("%w: header checksum mismatch", ErrFormat)
	case binary.BigEndian.Uint16(b[8:]) != version:
		return h, fmt.Errorf("%w: header version %d, this ldmirror reads %d", ErrFormat, binary.BigEndian.Uint16(b[8:]), version)
	case b[11] != 0 || b[56] > maxSource:
		return h, fmt.Errorf("%w: header reserved bytes", ErrFormat)
	}
	h = header{
		State:     b[10],
		BlockSize: binary.BigEndian.Uint32(b[12:]),
		Seq:       binary.BigEndian.Uint64(b[16:]),
		Size:      int64(binary.BigEndian.Uint64(b[24:])),
		AsOf:      fromUnixNano(int64(binary.BigEndian.Uint64(b[32:]))),
		Began:     int64(binary.BigEndian.Uint64(b[40:])),
		Committed: fromUnixNano(int64(binary.BigEndian.Uint64(b[48:]))),
		Source:    string(b[57 : 57+int(b[56])]),
	}
	if h.State != diskStaging && h.State != diskCommitted {
		return h, fmt.Errorf("%w: header state %d", ErrFormat, h.State)
	}
	if h.BlockSize == 0 || h.Size <= 0 || h.Began == 0 {
		return h, fmt.Errorf("%w: header geometry", ErrFormat)
	}
	return h, nil
}

// record is a record's header.
type record struct {
	Kind  uint8
	Count uint32
	First uint32
	Began int64
}

// put encodes r into b (recordHeader bytes).
func (r record) put(b []byte) {
	binary.BigEndian.PutUint32(b[0:], recordMagic)
	b[4], b[5], b[6], b[7] = r.Kind, 0, 0, 0
	binary.BigEndian.PutUint32(b[8:], r.Count)
	binary.BigEndian.PutUint32(b[12:], r.First)
	binary.BigEndian.PutUint64(b[16:], uint64(r.Began))
	binary.BigEndian.PutUint32(b[24:], 0)
	binary.BigEndian.PutUint32(b[28:], crc32.Checksum(b[:28], castagnoli))
}

// parseRecord decodes a record header of the log that began at began, on
// a volume of blocks blocks.
func parseRecord(b []byte, began int64, blocks uint64) (record, error) {
	var r record
	switch {
	case len(b) < recordHeader:
		return r, fmt.Errorf("%w: %d bytes", ErrFormat, len(b))
	case binary.BigEndian.Uint32(b[0:]) != recordMagic:
		return r, fmt.Errorf("%w: bad magic", ErrFormat)
	case binary.BigEndian.Uint32(b[28:]) != crc32.Checksum(b[:28], castagnoli):
		return r, fmt.Errorf("%w: checksum mismatch", ErrFormat)
	case b[5]|b[6]|b[7] != 0 || binary.BigEndian.Uint32(b[24:]) != 0:
		return r, fmt.Errorf("%w: reserved bytes", ErrFormat)
	}
	r = record{Kind: b[4], Count: binary.BigEndian.Uint32(b[8:]), First: binary.BigEndian.Uint32(b[12:]), Began: int64(binary.BigEndian.Uint64(b[16:]))}
	switch {
	case r.Began != began:
		return r, fmt.Errorf("%w: record of another log", ErrFormat)
	case r.Kind != kindData && r.Kind != kindZeros:
		return r, fmt.Errorf("%w: kind %d", ErrFormat, r.Kind)
	case r.Count == 0 || uint64(r.First)+uint64(r.Count) > blocks:
		return r, fmt.Errorf("%w: blocks %d+%d outside the volume's %d", ErrFormat, r.First, r.Count, blocks)
	}
	return r, nil
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNano(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}
