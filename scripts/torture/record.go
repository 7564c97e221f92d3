package main

import (
	"bytes"
	"crypto/sha256"
	be "encoding/binary"
	"fmt"
)

// recordSize is the size of one record: one 4 KiB block of the volume.
const recordSize = 4096

// recordMagic starts every record, so that a block read back is known to
// hold a record at all before its checksum is looked at.
const recordMagic = "LDTR"

// Record layout, big endian:
//
//	0     magic "LDTR"
//	4     writer ID (uint32)
//	8     record number k (uint64), per writer, from 0, never reused
//	16    round that wrote it (uint32)
//	20    payload: a stream derived from (writer, k)
//	4064  SHA-256 of bytes 0..4063
//
// A block read back is therefore either an intact record that names its
// writer and number, or not a record (torn, zero, foreign): never a record
// that looks intact but is not.
const (
	offWriter  = 4
	offK       = 8
	offRound   = 16
	offPayload = 20
	offSum     = recordSize - sha256.Size
)

// recordID names a record: its writer and number.
type recordID struct {
	Writer uint32
	K      uint64
}

func (id recordID) String() string { return fmt.Sprintf("w%d#%d", id.Writer, id.K) }

// encodeRecord fills b (recordSize bytes) with record k of writer w.
func encodeRecord(b []byte, w uint32, k uint64, round int) {
	copy(b, recordMagic)
	be.BigEndian.PutUint32(b[offWriter:], w)
	be.BigEndian.PutUint64(b[offK:], k)
	be.BigEndian.PutUint32(b[offRound:], uint32(round))
	// A cheap stream that differs per record (xorshift64*, seeded by the
	// record's identity): the checksum below is what makes it checkable.
	x := uint64(w)<<40 ^ k ^ 0x9e3779b97f4a7c15
	for i := offPayload; i+8 <= offSum; i += 8 {
		x ^= x >> 12
		x ^= x << 25
		x ^= x >> 27
		be.BigEndian.PutUint64(b[i:], x*0x2545f4914f6cdd1d)
	}
	// offSum-offPayload is not a multiple of 8: the last 4 bytes.
	be.BigEndian.PutUint32(b[offSum-4:], uint32(x))
	sum := sha256.Sum256(b[:offSum])
	copy(b[offSum:], sum[:])
}

// decodeRecord reports which record b holds, if b is an intact record.
func decodeRecord(b []byte) (id recordID, round int, ok bool) {
	if len(b) < recordSize || string(b[:len(recordMagic)]) != recordMagic {
		return recordID{}, 0, false
	}
	sum := sha256.Sum256(b[:offSum])
	if !bytes.Equal(sum[:], b[offSum:recordSize]) {
		return recordID{}, 0, false
	}
	return recordID{be.BigEndian.Uint32(b[offWriter:]), be.BigEndian.Uint64(b[offK:])},
		int(be.BigEndian.Uint32(b[offRound:])), true
}
