package transport

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
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

func TestHandshakeRefusals(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mutate  func(*Config)
		want    error
		logWant string
	}{
		{"wrong secret", func(c *Config) { c.Secret = []byte("another-secret-of-16+bytes") }, ErrAuth, "peer authentication failed"},
		{"other volume uuid", func(c *Config) { c.VolumeUUID[0] = 9 }, ErrVolumeMismatch, "volume uuid local"},
		{"other size", func(c *Config) { c.Size = 2 * testSize }, ErrVolumeMismatch, "size local 1048576 bytes, peer 2097152 bytes"},
		{"other block size", func(c *Config) { c.BlockSize = 8192 }, ErrVolumeMismatch, "block size local 4096 bytes, peer 8192 bytes"},
		{"same node id", func(c *Config) { c.NodeID = "b" }, ErrVolumeMismatch, "node IDs must differ"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := startSecondary(t)
			before := s.sum(t)
			cfg := testConfig("a")
			tc.mutate(&cfg)
			_, err := Dial(context.Background(), s.ln.Addr().String(), cfg)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Dial error = %v, want %v", err, tc.want)
			}
			poll.Until(t, 5*time.Second, "the rejection to be logged", func() bool { return strings.Contains(s.log.String(), tc.logWant) })
			if !strings.Contains(s.log.String(), "peer connection rejected") {
				t.Fatalf("log lacks the rejection line:\n%s", s.log)
			}
			if s.sum(t) != before {
				t.Fatal("the secondary's disk changed")
			}
			writeThrough(t, s)
		})
	}
}

func defaulted(c Config) Config {
	out, err := c.withDefaults()
	if err != nil {
		panic(err)
	}
	return out
}

// authenticatedConn runs a real handshake as the primary and returns the raw
// connection, so a test can send crafted frames after authentication.
func authenticatedConn(t *testing.T, addr string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	cfg := defaulted(testConfig("a"))
	if _, err := handshake(conn, NewFrameReader(conn), &cfg, true, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func writeFrameBytes(off uint64, data []byte) []byte {
	p := binary.BigEndian.AppendUint64(nil, off)
	return AppendFrame(nil, Header{Type: TypeWrite, Seq: 1}, append(p, data...))
}

// oldHello is the Hello of a peer that speaks protocol version 2, which
// has no Stage request: it would apply a resync's blocks to its volume as
// they come.
func oldHello(node string) []byte {
	b, err := (&Hello{Version: 3, NodeID: node, VolumeUUID: [16]byte{1, 2, 3, 4}, Size: testSize, BlockSize: 4096, Nonce: [32]byte{9}}).MarshalBinary()
	if err != nil {
		panic(err)
	}
	return b
}

// TestOldVersionRefused: a peer on protocol version 3 (no Stage request) is
// refused on either side, with both versions named, before any request
// could be misread.
func TestOldVersionRefused(t *testing.T) {
	const want = "protocol version mismatch: local 4, peer 3; upgrade the host on version 3"
	t.Run("old primary", func(t *testing.T) {
		s := startSecondary(t)
		conn, err := net.Dial("tcp", s.ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if err := writeFrame(conn, TypeHello, 0, 0, oldHello("a")); err != nil {
			t.Fatal(err)
		}
		fr := NewFrameReader(conn)
		if _, err := readControl(fr, TypeHello); err != nil {
			t.Fatal(err)
		}
		if _, err := readControl(fr, TypeAuth); !errors.Is(err, ErrPeerRefused) || !strings.Contains(err.Error(), want) {
			t.Fatalf("after an old Hello: %v, want refused with %q", err, want)
		}
		poll.Until(t, 5*time.Second, "the refusal to be logged", func() bool { return strings.Contains(s.log.String(), want) })
		writeThrough(t, s)
	})
	t.Run("old secondary", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			defer conn.Close()
			_ = writeFrame(conn, TypeHello, 0, 0, oldHello("b"))
			_, _ = io.Copy(io.Discard, conn)
		}()
		_, err = Dial(context.Background(), ln.Addr().String(), testConfig("a"))
		if !errors.Is(err, ErrVersion) || !strings.Contains(err.Error(), want) {
			t.Fatalf("Dial to an old secondary: %v, want %q", err, want)
		}
	})
}

func TestAdmitRefusesStaleEpoch(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "disk"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfg := testConfig("b")
	cfg.Admit = func(peer Hello) error {
		if peer.Epoch < 7 {
			return fmt.Errorf("%w: primary %s has epoch %d, the control plane is at 7", ErrStaleEpoch, peer.NodeID, peer.Epoch)
		}
		return nil
	}
	ln, err := Listen("127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go ln.Serve(ctx, fileHandler{f})
	old := testConfig("a")
	old.Epoch = 6
	if _, err := Dial(context.Background(), ln.Addr().String(), old); !errors.Is(err, ErrPeerRefused) || !strings.Contains(err.Error(), "epoch 6") {
		t.Fatalf("stale primary: %v, want refused naming its epoch", err)
	}
	current := testConfig("a")
	current.Epoch = 7
	s, err := Dial(context.Background(), ln.Addr().String(), current)
	if err != nil {
		t.Fatalf("current primary: %v", err)
	}
	s.Close()
}

// TestAdmitNotReady: a refusal because the secondary cannot decide yet
// reaches the primary as ErrNotReady (and ErrPeerRefused), with its reason,
// and the secondary does not count it as a rejected connection.
func TestAdmitNotReady(t *testing.T) {
	cfg := testConfig("b")
	cfg.Admit = func(Hello) error {
		return fmt.Errorf("%w: this host has not read the control plane's state", ErrNotReady)
	}
	sec := startSecondaryWith(t, cfg)
	_, err := Dial(context.Background(), sec.ln.Addr().String(), testConfig("a"))
	if !errors.Is(err, ErrNotReady) || !errors.Is(err, ErrPeerRefused) || !strings.Contains(err.Error(), "control plane's state") {
		t.Fatalf("Dial = %v, want ErrNotReady and ErrPeerRefused with the reason", err)
	}
	if n := sec.ln.Rejected(); n != 0 {
		t.Fatalf("%d rejected connections, want 0: not ready is not an error of the peer's", n)
	}
	// Any other refusal is not ErrNotReady, even if its text says so later.
	cfg.Admit = func(Hello) error {
		return fmt.Errorf("%w: a is not the primary (not ready yet)", ErrStaleEpoch)
	}
	sec = startSecondaryWith(t, cfg)
	if _, err := Dial(context.Background(), sec.ln.Addr().String(), testConfig("a")); !errors.Is(err, ErrPeerRefused) || errors.Is(err, ErrNotReady) {
		t.Fatalf("Dial = %v, want ErrPeerRefused only", err)
	}
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

func TestPeerDeathFailsPendingCalls(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// A secondary that authenticates, then never acks and dies.
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		cfg := defaulted(testConfig("b"))
		fr := NewFrameReader(conn)
		if _, err := handshake(conn, fr, &cfg, false, ""); err != nil {
			conn.Close()
			return
		}
		if _, err := fr.ReadHeader(); err == nil {
			conn.Close()
		}
	}()
	sess, err := Dial(context.Background(), ln.Addr().String(), testConfig("a"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := sess.SubmitWrite(0, make([]byte, 4096))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Wait(); !errors.Is(err, ErrDisconnected) {
		t.Fatalf("Wait = %v, want ErrDisconnected", err)
	}
	if _, err := sess.SubmitWrite(0, make([]byte, 4096)); err == nil {
		t.Fatal("submit on a broken session succeeded")
	}
}

func TestAckTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	hold := make(chan struct{})
	defer close(hold)
	// A secondary that authenticates and answers pings but never acks.
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		cfg := defaulted(testConfig("b"))
		fr := NewFrameReader(conn)
		if _, err := handshake(conn, fr, &cfg, false, ""); err != nil {
			return
		}
		for {
			h, _, err := fr.ReadFrame(nil)
			if err != nil {
				return
			}
			if h.Type == TypePing {
				_ = writeFrame(conn, TypePong, 0, 0, nil)
			}
		}
	}()
	cfg := testConfig("a")
	cfg.Timeout = 300 * time.Millisecond
	sess, err := Dial(context.Background(), ln.Addr().String(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	c, err := sess.SubmitWrite(0, make([]byte, 4096))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Wait(); !errors.Is(err, ErrAckTimeout) {
		t.Fatalf("Wait = %v, want ErrAckTimeout", err)
	}
}

// TestWatchdogBreaksAtTheTimeout: a session breaks once the peer has been
// silent for the timeout, or a request has waited that long for its ack,
// at that moment and not up to a polling period later (docs/journal.md
// bounds what an async primary acknowledges after a loss by it). The last
// frame, or the request, comes just after a quarter of the timeout, where
// a watchdog that looked every quarter broke a quarter late. Three
// sessions each, at once: the earliest break is the one compared, since a
// loaded machine only ever delays one.
func TestWatchdogBreaksAtTheTimeout(t *testing.T) {
	const timeout = time.Second
	const late = timeout / 8 // a poll every timeout/4 was up to 250 ms late
	for _, tc := range []struct {
		name string
		want error
	}{
		{"peer silent", ErrPeerSilent},
		{"ack overdue", ErrAckTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			const sessions = 3
			broke := make(chan time.Duration, sessions)
			for range sessions {
				go func() { broke <- watchdogBreak(t, timeout, tc.want) }()
			}
			earliest := 3 * timeout
			for range sessions {
				earliest = min(earliest, <-broke)
			}
			t.Logf("broke %v after the last frame or the request (timeout %v)", earliest, timeout)
			if earliest < timeout-10*time.Millisecond || earliest > timeout+late {
				t.Fatalf("the session broke %v after the last frame or the request; want the timeout, %v, within %v", earliest, timeout, late)
			}
		})
	}
}

// watchdogBreak runs one session of TestWatchdogBreaksAtTheTimeout against
// a secondary that authenticates and never acks (it answers pings only
// when the ack is what should time out), and returns how long after the
// last frame or the request the session broke with want (3 × timeout if
// it did not, or with another error, which it reports).
func watchdogBreak(t *testing.T, timeout time.Duration, want error) time.Duration {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Error(err)
		return 3 * timeout
	}
	defer ln.Close()
	ready := make(chan net.Conn, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		cfg := defaulted(testConfig("b"))
		fr := NewFrameReader(conn)
		if _, err := handshake(conn, fr, &cfg, false, ""); err != nil {
			conn.Close()
			return
		}
		ready <- conn
		for {
			h, _, err := fr.ReadFrame(nil)
			if err != nil {
				return
			}
			if h.Type == TypePing && want == ErrAckTimeout {
				_ = writeFrame(conn, TypePong, 0, 0, nil)
			}
		}
	}()
	cfg := testConfig("a")
	cfg.Timeout = timeout
	sess, err := Dial(context.Background(), ln.Addr().String(), cfg)
	if err != nil {
		t.Error(err)
		return 3 * timeout
	}
	defer sess.Close()
	start := time.Now()
	conn := <-ready
	defer conn.Close()
	time.Sleep(time.Until(start.Add(timeout/4 + 20*time.Millisecond))) // the moment under test, not a synchronization
	var from time.Time
	var c *Call
	if want == ErrPeerSilent {
		if err := writeFrame(conn, TypePong, 0, 0, nil); err != nil {
			t.Error(err)
			return 3 * timeout
		}
		from = time.Now() // the primary read it after this, at the earliest
	} else {
		from = time.Now()
		if c, err = sess.SubmitWrite(0, make([]byte, 4096)); err != nil {
			t.Error(err)
			return 3 * timeout
		}
	}
	select {
	case <-sess.Done():
	case <-time.After(3 * timeout):
		t.Error("the session did not break")
		return 3 * timeout
	}
	took := time.Since(from)
	if !errors.Is(sess.Err(), want) {
		t.Errorf("session error %v, want %v", sess.Err(), want)
	}
	if c != nil {
		if err := c.Wait(); !errors.Is(err, want) {
			t.Errorf("the write's error %v, want %v", err, want)
		}
	}
	return took
}
