package transport

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"
	"time"
)

// FuzzReadFrame feeds arbitrary bytes to the frame decoder and the payload
// parsers: they must return an error or a frame, never panic, and a frame
// they accept must re-encode to the same bytes.
func FuzzReadFrame(f *testing.F) {
	hello, _ := (&Hello{Version: 1, NodeID: "a", Size: 1 << 20, BlockSize: 4096, Generations: [4]uint64{1, 2, 3, 4}}).MarshalBinary()
	f.Add(AppendFrame(nil, Header{Type: TypeHello}, hello))
	f.Add(AppendFrame(nil, Header{Type: TypeWrite, Seq: 7, Epoch: 3}, append(binary.BigEndian.AppendUint64(nil, 4096), bytes.Repeat([]byte{1}, 512)...)))
	f.Add(AppendFrame(nil, Header{Type: TypeAck, Seq: 7}, ackPayload(nil, AckOK, nil)))
	f.Add(AppendFrame(nil, Header{Type: TypeFlush, Seq: 8}, nil))
	f.Add(AppendFrame(nil, Header{Type: TypeGeneration, Seq: 9}, make([]byte, 32)))
	cs := make([]byte, checksumRequestSize)
	putChecksumRequest(cs, 65536, 1<<20-65536, &[ChecksumKeySize]byte{0: 1, 31: 2})
	f.Add(AppendFrame(nil, Header{Type: TypeChecksum, Seq: 13}, cs))
	jw := binary.BigEndian.AppendUint64(nil, 0x1234)
	jw = binary.BigEndian.AppendUint64(jw, 77)
	jw = append(jw, byte(KindWrite), journalOrdered, 0, 0, 0, 0, 0, 0)
	jw = binary.BigEndian.AppendUint64(jw, 8192)
	f.Add(AppendFrame(nil, Header{Type: TypeJournal, Seq: 10, Epoch: 3}, append(jw, bytes.Repeat([]byte{2}, 512)...)))
	jt := append(append([]byte(nil), jw[:16]...), byte(KindTrim), 0, 0, 0, 0, 0, 0, 0)
	jt = binary.BigEndian.AppendUint64(jt, 4096)
	f.Add(AppendFrame(nil, Header{Type: TypeJournal, Seq: 11}, binary.BigEndian.AppendUint64(jt, 4096)))
	jf := append(append([]byte(nil), jw[:16]...), byte(KindFlush), 0, 0, 0, 0, 0, 0, 0)
	f.Add(AppendFrame(nil, Header{Type: TypeJournal, Seq: 12}, binary.BigEndian.AppendUint64(jf, 0)))
	var pw []byte
	for _, w := range (Progress{DoneBlocks: 1, TotalBlocks: 4, RateBytes: 1 << 20, ETA: 3 * time.Second}).words() {
		pw = binary.BigEndian.AppendUint64(pw, w)
	}
	f.Add(AppendFrame(nil, Header{Type: TypeProgress, Seq: 14}, pw))
	f.Add(AppendFrame(nil, Header{Type: TypeStage, Seq: 14}, append([]byte{byte(StageBegin), 0, 0, 0, 0, 0, 0, 0}, binary.BigEndian.AppendUint64(nil, 1<<20)...)))
	f.Add([]byte("LDM1garbage"))
	f.Fuzz(func(t *testing.T, in []byte) {
		fr := NewFrameReader(bytes.NewReader(in))
		var buf []byte
		consumed := 0
		for {
			h, p, err := fr.ReadFrame(buf)
			if err != nil {
				return
			}
			frame := AppendFrame(nil, h, p)
			if !bytes.Equal(frame, in[consumed:consumed+len(frame)]) {
				t.Fatalf("frame %s does not re-encode to its input", h.Type)
			}
			consumed += len(frame)
			switch h.Type {
			case TypeHello:
				var m Hello
				if m.UnmarshalBinary(p) == nil {
					if b, err := m.MarshalBinary(); err != nil || !bytes.Equal(b, p) {
						t.Fatalf("hello does not round-trip: %v", err)
					}
				}
			case TypeAck:
				_, _, _ = parseAck(p)
			case TypeWrite:
				_, _ = parseRequest(KindWrite, h, p, 1<<20)
			case TypeTrim:
				_, _ = parseRequest(KindTrim, h, p, 1<<20)
			case TypeFlush:
				_, _ = parseRequest(KindFlush, h, p, 1<<20)
			case TypeChecksum:
				if r, err := parseRequest(KindChecksum, h, p, 1<<20); err == nil {
					b := make([]byte, checksumRequestSize)
					putChecksumRequest(b, r.Offset, r.Length, &r.Key)
					if !bytes.Equal(b, p) {
						t.Fatal("checksum request does not round-trip")
					}
				}
			case TypeGeneration:
				_, _ = parseRequest(KindGeneration, h, p, 1<<20)
			case TypeProgress:
				r, err := parseRequest(KindProgress, h, p, 1<<20)
				if err == nil && r.Progress.DoneBlocks != binary.BigEndian.Uint64(p) {
					t.Fatalf("progress %+v from payload %x", r.Progress, p)
				}
			case TypeStage:
				if r, err := parseRequest(KindStage, h, p, 1<<20); err == nil && (r.StageNeed < 0 || r.StageOp < StageBegin || r.StageOp > StageStatus) {
					t.Fatalf("stage request %s of %d bytes accepted", r.StageOp, r.StageNeed)
				}
			case TypeJournal:
				if r, err := parseJournal(h, p, 1<<20); err == nil && r.Kind == KindWrite && int64(len(r.Data)) != r.Length {
					t.Fatalf("journal write of %d bytes with %d data bytes", r.Length, len(r.Data))
				}
			}
		}
	})
}

func BenchmarkEncodeWriteFrame(b *testing.B) {
	data := make([]byte, 4096)
	var hdr [HeaderSize + 8]byte
	b.ReportAllocs()
	b.SetBytes(int64(len(data)))
	for i := 0; b.Loop(); i++ {
		binary.BigEndian.PutUint64(hdr[HeaderSize:], uint64(i)*4096)
		putHeader(hdr[:], Header{Type: TypeWrite, Length: uint32(8 + len(data)), Seq: uint64(i)})
		sealHeader(hdr[:HeaderSize], payloadSum(hdr[HeaderSize:], data))
	}
}

func BenchmarkDecodeWriteFrame(b *testing.B) {
	frame := AppendFrame(nil, Header{Type: TypeWrite, Seq: 1}, append(make([]byte, 8), make([]byte, 4096)...))
	r := bytes.NewReader(frame)
	fr := NewFrameReader(r)
	buf := make([]byte, MaxPayload)
	b.ReportAllocs()
	b.SetBytes(4096)
	for b.Loop() {
		r.Reset(frame)
		fr.r.Reset(r)
		if _, _, err := fr.ReadFrame(buf); err != nil {
			b.Fatal(err)
		}
	}
}

// pipeConn is a net.Conn that reads in and records what is written.
type pipeConn struct {
	in  *bytes.Reader
	out bytes.Buffer
}

func (c *pipeConn) Read(p []byte) (int, error)       { return c.in.Read(p) }
func (c *pipeConn) Write(p []byte) (int, error)      { return c.out.Write(p) }
func (c *pipeConn) Close() error                     { return nil }
func (c *pipeConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *pipeConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *pipeConn) SetDeadline(time.Time) error      { return nil }
func (c *pipeConn) SetReadDeadline(time.Time) error  { return nil }
func (c *pipeConn) SetWriteDeadline(time.Time) error { return nil }

// FuzzHandshake plays arbitrary bytes as an unauthenticated initiator to a
// plaintext acceptor: the handshake must fail without a panic, and the
// acceptor must send nothing but its Hello and an Error (no MAC: the input
// cannot prove the secret), each at most a Hello's size.
func FuzzHandshake(f *testing.F) {
	hello, _ := (&Hello{Version: ProtocolVersion, NodeID: "a", VolumeUUID: [16]byte{1, 2, 3, 4}, Size: testSize, BlockSize: 4096}).MarshalBinary()
	hf := AppendFrame(nil, Header{Type: TypeHello}, hello)
	f.Add(hf)
	f.Add(append(bytes.Clone(hf), AppendFrame(nil, Header{Type: TypeAuth}, make([]byte, 32))...))
	f.Add(AppendFrame(nil, Header{Type: TypeHello}, make([]byte, maxHelloPayload+1))[:HeaderSize])
	f.Add(append(bytes.Clone(hf), AppendFrame(nil, Header{Type: TypeWrite, Seq: 1}, make([]byte, 4104))...))
	f.Fuzz(func(t *testing.T, in []byte) {
		cfg := defaulted(testConfig("b"))
		conn := &pipeConn{in: bytes.NewReader(in)}
		if _, err := handshake(conn, NewFrameReader(conn), &cfg, false, ""); err == nil {
			t.Fatal("a handshake without the secret succeeded")
		}
		fr := NewFrameReader(bytes.NewReader(conn.out.Bytes()))
		for i := 0; ; i++ {
			h, p, err := fr.ReadFrame(nil)
			if err != nil {
				break
			}
			if want := []Type{TypeHello, TypeError}[min(i, 1)]; h.Type != want || i > 1 || len(p) > maxHelloPayload {
				t.Fatalf("frame %d from the acceptor: %s of %d bytes", i, h.Type, len(p))
			}
		}
	})
}
