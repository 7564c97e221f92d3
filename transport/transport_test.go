package transport

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/internal/poll"

	"github.com/ldmirror/ldmirror/internal/logbuf"
)

const testSize = 1 << 20

func testConfig(node string) Config {
	return Config{
		NodeID:            node,
		InsecurePlaintext: true,
		Secret:            []byte("0123456789abcdef-test-secret"),
		VolumeUUID:        [16]byte{1, 2, 3, 4},
		Size:              testSize,
		BlockSize:         4096,
		Timeout:           2 * time.Second,
	}
}

// fileHandler applies writes to a file: the secondary's disk in these tests.
type fileHandler struct{ f *os.File }

func (h fileHandler) Handle(r *Request) {
	var err error
	switch r.Kind {
	case KindWrite:
		_, err = h.f.WriteAt(r.Data, r.Offset)
	case KindFlush:
		err = h.f.Sync()
	case KindOutOfSync:
		r.Reply([]byte("blocks that may differ"), nil)
		return
	case KindChecksum:
		r.Reply(echoChecksum(r.Offset, r.Length, &r.Key), nil)
		return
	case KindStage: // echoes the operation and the size
		b, _ := StageReply{State: StageStaging, Staged: uint64(r.StageNeed), Reason: r.StageOp.String()}.MarshalBinary()
		r.Reply(b, nil)
		return
	}
	r.Done(err)
}

type secondary struct {
	ln   *Listener
	file *os.File
	log  *logbuf.Buffer
}

func startSecondary(t *testing.T) *secondary {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "disk"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(testSize); err != nil {
		t.Fatal(err)
	}
	logs := &logbuf.Buffer{}
	cfg := testConfig("b")
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	ln, err := Listen("127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := ln.Serve(ctx, fileHandler{f}); err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		f.Close()
	})
	return &secondary{ln: ln, file: f, log: logs}
}

func (s *secondary) sum(t *testing.T) [32]byte {
	t.Helper()
	b, err := io.ReadAll(io.NewSectionReader(s.file, 0, testSize))
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// writeThrough checks the listener still serves a good primary.
func writeThrough(t *testing.T, s *secondary) {
	t.Helper()
	sess, err := Dial(context.Background(), s.ln.Addr().String(), testConfig("a"))
	if err != nil {
		t.Fatalf("good primary cannot connect after bad input: %v", err)
	}
	defer sess.Close()
	data := bytes.Repeat([]byte{0xAB}, 4096)
	c, err := sess.SubmitWrite(8192, data)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Wait(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	if _, err := s.file.ReadAt(got, 8192); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("write through a good session did not land: %v", err)
	}
}

func TestPipelinedWritesAndFlush(t *testing.T) {
	s := startSecondary(t)
	sess, err := Dial(context.Background(), s.ln.Addr().String(), testConfig("a"))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	var calls []*Call
	for i := range 100 {
		c, err := sess.SubmitWrite(int64(i)*4096, bytes.Repeat([]byte{byte(i)}, 4096))
		if err != nil {
			t.Fatal(err)
		}
		calls = append(calls, c)
	}
	fl, err := sess.SubmitFlush()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range calls {
		if err := c.Wait(); err != nil {
			t.Fatal(err)
		}
	}
	if err := fl.Wait(); err != nil {
		t.Fatal(err)
	}
	st := sess.Stats()
	if st.Writes != 100 || st.Bytes != 100*4096 || st.Flushes != 1 || st.InFlight != 0 {
		t.Fatalf("stats = %+v", st)
	}
	buf := make([]byte, 4096)
	for i := range 100 {
		if _, err := s.file.ReadAt(buf, int64(i)*4096); err != nil || buf[0] != byte(i) || buf[4095] != byte(i) {
			t.Fatalf("block %d on the secondary = %x..., want %x", i, buf[0], byte(i))
		}
	}
}

// echoChecksum is fileHandler's reply to a checksum request: what arrived
// (key, offset, length), then as many bytes as the digests of its blocks.
func echoChecksum(off, n int64, key *[ChecksumKeySize]byte) []byte {
	b := binary.BigEndian.AppendUint64(append(key[:0:0], key[:]...), uint64(off))
	b = binary.BigEndian.AppendUint64(b, uint64(n))
	return append(b, bytes.Repeat([]byte{0xd1}, int((n+4095)/4096)*ChecksumDigestSize)...)
}

// TestChecksumRequest: the key, offset and length of a checksum request
// arrive as sent, and a reply of a digest a block comes back; a request of
// more than MaxChecksumBlocks blocks is refused before it is sent.
func TestChecksumRequest(t *testing.T) {
	if reply := 4 + MaxChecksumBlocks*ChecksumDigestSize; reply > MaxPayload {
		t.Fatalf("the reply to a maximal checksum request is %d bytes, more than a frame's %d", reply, MaxPayload)
	}
	s := startSecondary(t)
	sess, err := Dial(context.Background(), s.ln.Addr().String(), testConfig("a"))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	for _, tc := range []struct {
		name   string
		off, n int64
	}{
		{"one block", 8192, 4096},
		{"the whole volume", 0, testSize},
		{"a partial last block", testSize - 6000, 6000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key := &[ChecksumKeySize]byte{0: 0xa5, 15: 0x0f, 16: 0x10, 31: 0x5a}
			c, err := sess.SubmitChecksum(tc.off, tc.n, key)
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.WaitReply()
			if err != nil {
				t.Fatal(err)
			}
			if want := echoChecksum(tc.off, tc.n, key); !bytes.Equal(got, want) {
				t.Fatalf("reply %x, want %x", got, want)
			}
		})
	}
	if _, err := sess.SubmitChecksum(0, MaxChecksumBlocks*4096+1, new([ChecksumKeySize]byte)); err == nil {
		t.Fatalf("a checksum request of more than %d blocks was accepted", MaxChecksumBlocks)
	}
}

func TestOutOfSyncReply(t *testing.T) {
	s := startSecondary(t)
	sess, err := Dial(context.Background(), s.ln.Addr().String(), testConfig("a"))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	c, err := sess.SubmitOutOfSync()
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.WaitReply()
	if err != nil || string(got) != "blocks that may differ" {
		t.Fatalf("WaitReply = %q, %v", got, err)
	}
}

func writeFrameBytes(off uint64, data []byte) []byte {
	p := binary.BigEndian.AppendUint64(nil, off)
	return AppendFrame(nil, Header{Type: TypeWrite, Seq: 1}, append(p, data...))
}

func TestHostileFrames(t *testing.T) {
	good := writeFrameBytes(0, bytes.Repeat([]byte{0xEE}, 4096))
	for _, tc := range []struct {
		name      string
		authFirst bool
		frame     func() []byte
		logWant   string
	}{
		{"garbage bytes on the port", false, func() []byte { return []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n<garbage garbage>") }, "not an ldmirror frame (bad magic)"},
		{"bad crc", true, func() []byte { b := bytes.Clone(good); b[HeaderSize+100] ^= 1; return b }, "frame checksum mismatch: write frame seq 1"},
		{"frame longer than the maximum", true, func() []byte {
			b := bytes.Clone(good[:HeaderSize])
			binary.BigEndian.PutUint32(b[8:12], MaxPayload+1)
			return b
		}, fmt.Sprintf("frame larger than the maximum: write of %d bytes, maximum %d here", MaxPayload+1, MaxPayload)},
		{"truncated frame", true, func() []byte { return good[:HeaderSize+1000] }, "truncated frame: write payload cut short"},
		{"unknown type", true, func() []byte { b := bytes.Clone(good); b[4] = 200; return b }, "unknown frame type: 200"},
		{"write outside the volume", true, func() []byte { return writeFrameBytes(testSize-100, make([]byte, 4096)) }, "outside the 1048576-byte volume"},
		{"checksum request without a key (version 1)", true, func() []byte {
			p := binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, 0), 4096)
			return AppendFrame(nil, Header{Type: TypeChecksum, Seq: 1}, p)
		}, "malformed frame: checksum frame of 16 bytes, want 48"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startSecondary(t)
			before := s.sum(t)
			var conn net.Conn
			if tc.authFirst {
				conn = authenticatedConn(t, s.ln.Addr().String())
			} else {
				var err error
				if conn, err = net.Dial("tcp", s.ln.Addr().String()); err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
			}
			if _, err := conn.Write(tc.frame()); err != nil {
				t.Fatal(err)
			}
			if tc.name == "truncated frame" {
				conn.(*net.TCPConn).CloseWrite()
			}
			poll.Until(t, 5*time.Second, "the bad frame to be logged", func() bool { return strings.Contains(s.log.String(), tc.logWant) })
			// The secondary closes the connection: reads end.
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.Copy(io.Discard, conn); err != nil {
				t.Fatalf("connection not closed by the secondary: %v", err)
			}
			if s.sum(t) != before {
				t.Fatal("the secondary's disk changed")
			}
			if s.ln.Rejected() == 0 {
				t.Fatal("rejected counter not raised")
			}
			writeThrough(t, s)
		})
	}
}
