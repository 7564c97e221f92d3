package journal

import (
	"bytes"
	"encoding/binary"
	"testing"
)

const fuzzID = 0x1d2e3f4a5b6c7d8f

// encodeRecord returns a whole record as Append writes it.
func encodeRecord(kind Kind, open uint32, seq uint64, off, length int64, data []byte) []byte {
	b := make([]byte, HeaderSize, HeaderSize+len(data))
	putHeader(b, kind, open, seq, off, length)
	binary.BigEndian.PutUint32(b[12:16], recordSum(idSum(fuzzID), b, data))
	return append(b, data...)
}

// parseRecord decodes one record from b the way Open and a Cursor do: the
// header, then its data, then the checksum.
func parseRecord(seed uint32, b []byte) (header, []byte, error) {
	h, err := decodeHeader(b)
	if err != nil {
		return h, nil, err
	}
	n := h.dataLen()
	if int64(len(b)-HeaderSize) < n {
		return h, nil, errShort
	}
	data := b[HeaderSize : HeaderSize+n]
	hdr := append([]byte(nil), b[:HeaderSize]...)
	if !verify(seed, &h, hdr, data) {
		return h, nil, errSum
	}
	return h, data, nil
}

type fuzzErr string

func (e fuzzErr) Error() string { return string(e) }

const (
	errShort = fuzzErr("record cut short")
	errSum   = fuzzErr("checksum mismatch")
)

// FuzzDecodeRecord feeds arbitrary bytes to the record decoder: it returns
// an error or a record, never panics, and a record it accepts re-encodes to
// exactly its input bytes (so no two inputs decode the same).
func FuzzDecodeRecord(f *testing.F) {
	f.Add(encodeRecord(KindWrite, 1, 7, 4096, 512, bytes.Repeat([]byte{0xab}, 512)))
	f.Add(encodeRecord(KindTrim, 2, 8, 1<<20, 1<<16, nil))
	f.Add(encodeRecord(KindFlush, 3, 9, 0, 0, nil))
	torn := encodeRecord(KindWrite, 1, 10, 0, 100, bytes.Repeat([]byte{1}, 100))
	f.Add(torn[:70])
	f.Add([]byte("LDJR"))
	f.Fuzz(func(t *testing.T, in []byte) {
		if h, err := decodeHeader(in); err == nil {
			// Any header the decoder accepts is canonical.
			b := make([]byte, HeaderSize)
			putHeader(b, h.kind, h.open, h.seq, h.offset, h.length)
			binary.BigEndian.PutUint32(b[12:16], h.sum)
			if !bytes.Equal(b, in[:HeaderSize]) {
				t.Fatalf("header %s seq %d does not re-encode to its input", h.kind, h.seq)
			}
		}
		h, data, err := parseRecord(idSum(fuzzID), in)
		if err != nil {
			return
		}
		if h.kind == KindWrite && int64(len(data)) != h.length {
			t.Fatalf("write of %d bytes decoded with %d data bytes", h.length, len(data))
		}
		if h.size() > uint64(len(in)) {
			t.Fatalf("record of %d bytes accepted from %d bytes", h.size(), len(in))
		}
		again := encodeRecord(h.kind, h.open, h.seq, h.offset, h.length, data)
		if !bytes.Equal(again, in[:h.size()]) {
			t.Fatalf("record %s seq %d does not re-encode to its input", h.kind, h.seq)
		}
		if _, _, err := parseRecord(idSum(fuzzID+1), in); err == nil {
			t.Fatal("record accepted under another journal's identity")
		}
	})
}
