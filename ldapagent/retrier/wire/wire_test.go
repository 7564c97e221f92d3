package wire

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"runtime"
	"testing"

	ber "github.com/go-asn1-ber/asn1-ber"
)

// berMessage encodes an LDAPMessage with asn1-ber, the reference for
// Header and Append.
func berMessage(id int64, op *ber.Packet, controls *ber.Packet) []byte {
	p := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "")
	p.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, id, ""))
	p.AppendChild(op)
	if controls != nil {
		p.AppendChild(controls)
	}
	return p.Bytes()
}

func deleteOp(dn string) *ber.Packet {
	return ber.NewString(ber.ClassApplication, ber.TypePrimitive, 10, dn, "")
}

func controlsOf(oid string) *ber.Packet {
	cs := ber.Encode(ber.ClassContext, ber.TypeConstructed, 0, nil, "")
	c := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "")
	c.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, oid, ""))
	cs.AppendChild(c)
	return cs
}

// TestAppendMatchesBer: the envelope written here is asn1-ber's, for
// message IDs and operation sizes across every length form.
func TestAppendMatchesBer(t *testing.T) {
	ids := []int64{0, 1, 127, 128, 255, 256, 32767, 32768, 1<<23 - 1, 1 << 23, 1<<31 - 1}
	sizes := []int{0, 1, 100, 127, 200, 300, 70000, 1 << 24}
	for _, id := range ids {
		for _, size := range sizes {
			if size > 1<<16 && id != 1<<31-1 {
				continue // the four-byte length once is enough
			}
			op := deleteOp(string(bytes.Repeat([]byte{'x'}, size)))
			for _, ctl := range []*ber.Packet{nil, controlsOf("1.2.3")} {
				want := berMessage(id, op, ctl)
				var cb []byte
				if ctl != nil {
					cb = ctl.Bytes()
				}
				got := Append(nil, id, op.Bytes(), cb)
				if !bytes.Equal(got, want) {
					t.Fatalf("id %d, op %d bytes: Append differs from asn1-ber", id, size)
				}
				m, err := Split(got)
				if err != nil || m.ID != id || !bytes.Equal(m.Op, op.Bytes()) || !bytes.Equal(m.Controls, cb) {
					t.Fatalf("id %d, op %d bytes: Split = %v, %v", id, size, m.ID, err)
				}
			}
		}
	}
}

// TestReadGrowsWithData: a message that declares 4 MiB and sends 64 KiB
// costs about what was sent, not what was declared.
func TestReadGrowsWithData(t *testing.T) {
	declared := 4 << 20
	in := append([]byte{0x30, 0x84, byte(declared >> 24), byte(declared >> 16), byte(declared >> 8), byte(declared)}, make([]byte, 64<<10)...)
	r := bufio.NewReader(bytes.NewReader(in))
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := Read(r, 8<<20)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("partial message: err = %v, want io.ErrUnexpectedEOF", err)
	}
	if got := after.TotalAlloc - before.TotalAlloc; got > 512<<10 {
		t.Fatalf("reading 64 KiB of a declared 4 MiB allocated %d KiB", got>>10)
	}
}

func TestReadLimits(t *testing.T) {
	cases := []struct {
		name string
		in   []byte
		want error
	}{
		{"not a sequence", []byte{0x04, 0x00}, ErrMalformed},
		{"indefinite length", []byte{0x30, 0x80}, ErrMalformed},
		{"five length bytes", []byte{0x30, 0x85, 1, 0, 0, 0, 0}, ErrOversized},
		{"over the limit", []byte{0x30, 0x82, 0x04, 0x00}, ErrOversized},
		{"truncated", []byte{0x30, 0x05, 0x02, 0x01}, io.ErrUnexpectedEOF},
	}
	for _, c := range cases {
		_, err := Read(bufio.NewReader(bytes.NewReader(c.in)), 1024)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.want)
		}
	}
	msg := Append(nil, 5, deleteOp("cn=x").Bytes(), nil)
	got, err := Read(bufio.NewReader(bytes.NewReader(msg)), len(msg))
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("Read of a message at the limit: %v", err)
	}
}

func TestResultAndFirst(t *testing.T) {
	op := ber.Encode(ber.ClassApplication, ber.TypeConstructed, 5, nil, "")
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, int64(68), ""))
	op.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, "dc=example", ""))
	op.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, "exists", ""))
	code, dn, msg, err := Result(op.Bytes())
	if err != nil || code != 68 || string(dn) != "dc=example" || string(msg) != "exists" {
		t.Fatalf("Result = %d %q %q %v", code, dn, msg, err)
	}
	first, err := First(op.Bytes())
	if err != nil || len(first) != 1 || first[0] != 68 {
		t.Fatalf("First = %v %v", first, err)
	}
}

// FuzzSplit: Split and the field readers never panic, and a message Split
// accepts, written again by Append, splits into the same elements.
func FuzzSplit(f *testing.F) {
	f.Add(Append(nil, 7, deleteOp("cn=x").Bytes(), controlsOf("1.2").Bytes()))
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x01})
	f.Fuzz(func(t *testing.T, data []byte) {
		msg, err := Read(bufio.NewReader(bytes.NewReader(data)), 1<<16)
		if err != nil {
			return
		}
		m, err := Split(msg)
		if err != nil {
			return
		}
		again, err := Split(Append(nil, m.ID, m.Op, m.Controls))
		if err != nil || again.ID != m.ID || !bytes.Equal(again.Op, m.Op) || !bytes.Equal(again.Controls, m.Controls) {
			t.Fatalf("Append of a split message does not split back: %v", err)
		}
		_, _, _, _ = Result(m.Op)
		_, _ = First(m.Op)
	})
}
