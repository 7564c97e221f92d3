package transport

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/internal/logbuf"
	"github.com/ldmirror/ldmirror/internal/pkitest"
	"github.com/ldmirror/ldmirror/internal/poll"
	"github.com/ldmirror/ldmirror/internal/tamper"
	"github.com/ldmirror/ldmirror/pki"
)

// tlsConfig is testConfig on a TLS link with src's key pair.
func tlsConfig(node string, src *pki.Source) Config {
	c := testConfig(node)
	c.InsecurePlaintext, c.Secret = false, nil
	c.ServerTLS, c.ClientTLS, c.PeerID = src.ServerConfig(), src.ClientConfig(), pki.DataHostID
	return c
}

// startTLSSecondary is startSecondary on a TLS link, as node b of ca.
func startTLSSecondary(t *testing.T, src *pki.Source, mutate ...func(*Config)) *secondary {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "disk"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(testSize); err != nil {
		t.Fatal(err)
	}
	logs := &logbuf.Buffer{}
	cfg := tlsConfig("b", src)
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	for _, m := range mutate {
		m(&cfg)
	}
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

func mustWrite(t *testing.T, s *Session, off int64, data []byte) {
	t.Helper()
	c, err := s.SubmitWrite(off, data)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Wait(); err != nil {
		t.Fatal(err)
	}
}

// TestTLSLink: writes and a flush go through a TLS 1.3 session with an
// AEAD suite, and both ends see the other's certificate.
func TestTLSLink(t *testing.T) {
	ca := pkitest.New(t)
	s := startTLSSecondary(t, ca.Source("b", pki.RoleData))
	a := ca.Source("a", pki.RoleData)
	sess, err := Dial(context.Background(), s.ln.Addr().String(), tlsConfig("a", a))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	cs, ok := sess.TLS()
	if !ok || cs.Version != tls.VersionTLS13 {
		t.Fatalf("session TLS state %v %x, want TLS 1.3", ok, cs.Version)
	}
	if name := tls.CipherSuiteName(cs.CipherSuite); !strings.Contains(name, "GCM") && !strings.Contains(name, "CHACHA20") {
		t.Fatalf("cipher suite %s", name)
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), MaxWrite/16)
	mustWrite(t, sess, 0, data)
	for i := range 64 {
		mustWrite(t, sess, int64(i)*4096, bytes.Repeat([]byte{byte(i)}, 4096))
	}
	c, err := sess.SubmitFlush()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Wait(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	if _, err := s.file.ReadAt(got, 63*4096); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{63}, 4096)) {
		t.Fatalf("write did not land: %v", err)
	}
	serial := fmt.Sprintf("peer_cert_serial=%x", a.Certificate().SerialNumber)
	poll.Until(t, 5*time.Second, "the secondary to log the session's protection", func() bool {
		return strings.Contains(s.log.String(), "tls=\"TLS 1.3 "+tls.CipherSuiteName(cs.CipherSuite)+"\"") && strings.Contains(s.log.String(), serial)
	})
}

// TestTLSIdentity: a node whose certificate names another node than its
// Hello, a witness, and a node of another CA are refused on the data link,
// each with the reason in the secondary's log, and its disk is untouched.
func TestTLSIdentity(t *testing.T) {
	ca := pkitest.New(t)
	s := startTLSSecondary(t, ca.Source("b", pki.RoleData))
	before := s.sum(t)
	for _, tc := range []struct {
		name    string
		cfg     Config
		want    error
		logWant string
	}{
		// c holds a valid data-host certificate for c and claims to be a.
		{"certificate of another node", tlsConfig("a", ca.Source("c", pki.RoleData)), ErrPeerRefused, `peer identity mismatch: the peer calls itself "a", its certificate names "c"`},
		{"witness", tlsConfig("a", ca.Source("w", pki.RoleWitness)), ErrPeerRefused, "a witness may not open a data-link session"},
		// The primary refuses first: it does not trust the secondary.
		{"another CA", tlsConfig("a", pkitest.New(t).Source("a", pki.RoleData)), ErrAuth, "remote error: tls: bad certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Dial(context.Background(), s.ln.Addr().String(), tc.cfg)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Dial: %v, want %v", err, tc.want)
			}
			if tc.want == ErrPeerRefused && !strings.Contains(err.Error(), tc.logWant) {
				t.Fatalf("Dial: %v, want the secondary's reason %q", err, tc.logWant)
			}
			// slog quotes the error: its quotes are escaped.
			logged := strings.Trim(strconv.Quote(tc.logWant), `"`)
			poll.Until(t, 5*time.Second, "the refusal to be logged", func() bool { return strings.Contains(s.log.String(), logged) })
		})
	}
	if s.sum(t) != before {
		t.Fatal("the secondary's disk changed")
	}
	// Nor may a witness accept the primary: a primary refuses a secondary
	// whose certificate is a witness's.
	w := startTLSSecondary(t, ca.Source("w", pki.RoleWitness), func(c *Config) { c.NodeID = "w" })
	if _, err := Dial(context.Background(), w.ln.Addr().String(), tlsConfig("a", ca.Source("a", pki.RoleData))); !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), "witness") {
		t.Fatalf("dial to a witness: %v, want ErrAuth naming the witness", err)
	}
}

// TestTLSPlaintextMismatch: a plaintext primary at a TLS secondary (and
// back) is refused with a message that names the setting to align.
func TestTLSPlaintextMismatch(t *testing.T) {
	ca := pkitest.New(t)
	s := startTLSSecondary(t, ca.Source("b", pki.RoleData))
	if _, err := Dial(context.Background(), s.ln.Addr().String(), testConfig("a")); err == nil {
		t.Fatal("a plaintext primary connected to a TLS secondary")
	}
	poll.Until(t, 5*time.Second, "the refusal to be logged", func() bool {
		return strings.Contains(s.log.String(), "the peer sends plaintext frames; both hosts must run with the same --insecure-plaintext-link setting")
	})
}

// TestTLSTamper: an on-path relay that flips a byte of a write, drops a
// record, injects a forged one toward the primary, or replays an earlier
// session makes the detecting side end the session with ErrIntegrity, and
// no write is acknowledged that the secondary did not apply.
func TestTLSTamper(t *testing.T) {
	for _, action := range []tamper.Action{tamper.Flip, tamper.Drop, tamper.Inject, tamper.Replay} {
		t.Run(action.String(), func(t *testing.T) {
			ca := pkitest.New(t)
			s := startTLSSecondary(t, ca.Source("b", pki.RoleData))
			relay, err := tamper.New(s.ln.Addr().String(), false)
			if err != nil {
				t.Fatal(err)
			}
			defer relay.Close()
			cfg := tlsConfig("a", ca.Source("a", pki.RoleData))
			cfg.Timeout = time.Second
			if action == tamper.Replay {
				// Record a whole session, then replay it to the secondary.
				sess, err := Dial(context.Background(), relay.Addr(), cfg)
				if err != nil {
					t.Fatal(err)
				}
				mustWrite(t, sess, 0, bytes.Repeat([]byte{7}, 4096))
				sess.Close()
				poll.Until(t, 5*time.Second, "the first session to end at the secondary", func() bool { return s.ln.Active() == nil })
				relay.Arm(tamper.Replay)
				if _, err := Dial(context.Background(), relay.Addr(), cfg); err == nil {
					t.Fatal("the dial the relay replaced succeeded")
				}
				if _, err := relay.Wait(5 * time.Second); err != nil {
					t.Fatal(err)
				}
				poll.Until(t, 5*time.Second, "the secondary to refuse the replay", func() bool {
					return strings.Contains(s.log.String(), "peer connection rejected") && strings.Contains(s.log.String(), ErrIntegrity.Error())
				})
				return
			}
			sess, err := Dial(context.Background(), relay.Addr(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer sess.Close()
			relay.Arm(action)
			// Writes of distinct data until the session breaks; each one
			// acknowledged must be on the secondary's disk.
			type result struct {
				off  int64
				data []byte
				err  error
			}
			var mu sync.Mutex
			var results []result
			var wg sync.WaitGroup
			for i := range 256 {
				c, err := sess.SubmitWrite(int64(i%256)*4096, bytes.Repeat([]byte{byte(i + 1)}, 4096))
				if err != nil {
					break
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					err := c.Wait()
					mu.Lock()
					results = append(results, result{int64(i%256) * 4096, bytes.Repeat([]byte{byte(i + 1)}, 4096), err})
					mu.Unlock()
				}()
			}
			at, err := relay.Wait(5 * time.Second)
			if err != nil {
				t.Fatal(err)
			}
			select {
			case <-sess.Done():
			case <-time.After(cfg.Timeout):
				t.Fatalf("session still up %v after the relay tampered", cfg.Timeout)
			}
			t.Logf("session ended %v after the tampering: %v", time.Since(at).Round(time.Millisecond), sess.Err())
			wg.Wait()
			// The side that receives the tampered stream detects it: the
			// secondary for a flipped or dropped write (the primary then
			// sees the connection reset), the primary for an injected ack.
			if action == tamper.Inject {
				if !errors.Is(sess.Err(), ErrIntegrity) {
					t.Fatalf("session error %v, want ErrIntegrity", sess.Err())
				}
			} else {
				poll.Until(t, 5*time.Second, "the secondary to name the integrity failure", func() bool {
					return strings.Contains(s.log.String(), "peer connection closed") && strings.Contains(s.log.String(), ErrIntegrity.Error())
				})
			}
			acked := 0
			for _, r := range results {
				if r.err != nil {
					if !errors.Is(r.err, ErrDisconnected) {
						t.Fatalf("write failed with %v, want ErrDisconnected", r.err)
					}
					continue
				}
				acked++
				got := make([]byte, 4096)
				if _, err := s.file.ReadAt(got, r.off); err != nil {
					t.Fatal(err)
				}
				// A later write to the block may have landed too; an
				// acknowledged one must have landed or been overwritten
				// by one that did.
				if !bytes.Equal(got, r.data) && bytes.Equal(got, make([]byte, 4096)) {
					t.Fatalf("write at %d acknowledged but not on the secondary", r.off)
				}
			}
			t.Logf("%d of %d writes acknowledged before the session ended", acked, len(results))
		})
	}
}

// TestRecordedLinkHidesData: a relay that records every byte of a TLS
// session that carries a known pattern does not see it; on a plaintext
// link the same recording does (so the check can fail).
func TestRecordedLinkHidesData(t *testing.T) {
	pattern := bytes.Repeat([]byte("ldmirror-known-pattern:"), 4096/23+1)[:4096]
	for _, plain := range []bool{false, true} {
		ca := pkitest.New(t)
		var s *secondary
		cfg := testConfig("a")
		if plain {
			s = startSecondary(t)
		} else {
			s = startTLSSecondary(t, ca.Source("b", pki.RoleData))
			cfg = tlsConfig("a", ca.Source("a", pki.RoleData))
		}
		relay, err := tamper.New(s.ln.Addr().String(), true)
		if err != nil {
			t.Fatal(err)
		}
		sess, err := Dial(context.Background(), relay.Addr(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		mustWrite(t, sess, 8192, pattern)
		sess.Close()
		relay.Close()
		if got := bytes.Contains(relay.Recorded(), pattern[:64]); got != plain {
			t.Fatalf("plaintext link %t: the recording holds the pattern: %t", plain, got)
		}
	}
}

// TestRotationKeepsSessions: after both hosts reload new key pairs, the
// running session still carries writes, and a new session presents the
// new certificates.
func TestRotationKeepsSessions(t *testing.T) {
	ca := pkitest.New(t)
	b, a := ca.Source("b", pki.RoleData), ca.Source("a", pki.RoleData)
	s := startTLSSecondary(t, b)
	old, err := Dial(context.Background(), s.ln.Addr().String(), tlsConfig("a", a))
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	oldA, oldB := a.Certificate().SerialNumber, b.Certificate().SerialNumber
	ca.Issue("a", pki.RoleData)
	ca.Issue("b", pki.RoleData)
	if err := a.Reload(); err != nil {
		t.Fatal(err)
	}
	if err := b.Reload(); err != nil {
		t.Fatal(err)
	}
	if a.Certificate().SerialNumber.Cmp(oldA) == 0 || b.Certificate().SerialNumber.Cmp(oldB) == 0 {
		t.Fatal("reload kept the old certificates")
	}
	mustWrite(t, old, 0, bytes.Repeat([]byte{1}, 4096)) // the running session survived
	if cs, _ := old.TLS(); cs.PeerCertificates[0].SerialNumber.Cmp(oldB) != 0 {
		t.Fatal("the running session's peer certificate changed")
	}
	next, err := Dial(context.Background(), s.ln.Addr().String(), tlsConfig("a", a))
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close()
	cs, _ := next.TLS()
	if cs.PeerCertificates[0].SerialNumber.Cmp(b.Certificate().SerialNumber) != 0 {
		t.Fatal("a new session did not get the secondary's new certificate")
	}
	// The new session replaces the old one at the secondary once it is
	// admitted: then the active session shows the primary's new serial.
	poll.Until(t, 5*time.Second, "the secondary to serve the new session with the primary's new certificate", func() bool {
		act := s.ln.Active()
		if act == nil {
			return false
		}
		scs, _ := act.TLS()
		return scs.PeerCertificates[0].SerialNumber.Cmp(a.Certificate().SerialNumber) == 0
	})
	mustWrite(t, next, 4096, bytes.Repeat([]byte{2}, 4096))
}

// TestAcceptorProvesLast: on a plaintext link the acceptor sends no MAC
// to a client that has not proved the secret: not before its Auth, and
// not after a wrong one.
func TestAcceptorProvesLast(t *testing.T) {
	cfg := testConfig("b")
	cfg.Timeout = 300 * time.Millisecond
	s := startSecondaryWith(t, cfg)
	for _, sendAuth := range []bool{false, true} {
		conn, err := net.Dial("tcp", s.ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		hello, err := (&Hello{Version: ProtocolVersion, NodeID: "a", VolumeUUID: [16]byte{1, 2, 3, 4}, Size: testSize, BlockSize: 4096, Nonce: [32]byte{1}}).MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if err := writeFrame(conn, TypeHello, 0, 0, hello); err != nil {
			t.Fatal(err)
		}
		if sendAuth {
			if err := writeFrame(conn, TypeAuth, 0, 0, make([]byte, 32)); err != nil {
				t.Fatal(err)
			}
		}
		// Everything the acceptor sends until it gives up on us.
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		fr := NewFrameReader(conn)
		var types []Type
		for {
			h, _, err := fr.ReadFrame(nil)
			if err != nil {
				break
			}
			types = append(types, h.Type)
		}
		conn.Close()
		want := "[hello]"
		if sendAuth {
			want = "[hello error]"
		}
		if got := fmt.Sprint(types); got != want {
			t.Fatalf("auth sent %t: the acceptor sent %s, want %s", sendAuth, got, want)
		}
	}
}

// startSecondaryWith is startSecondary with cfg.
func startSecondaryWith(t *testing.T, cfg Config) *secondary {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "disk"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(testSize); err != nil {
		t.Fatal(err)
	}
	logs := &logbuf.Buffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	ln, err := Listen("127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = ln.Serve(ctx, fileHandler{f})
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		f.Close()
	})
	return &secondary{ln: ln, file: f, log: logs}
}

// TestPreAuthFrameLimit: before the peer is authenticated the secondary
// reads no frame larger than a Hello; it refuses the header of a larger
// one without reading its payload.
func TestPreAuthFrameLimit(t *testing.T) {
	s := startSecondary(t)
	conn, err := net.Dial("tcp", s.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hdr := AppendFrame(nil, Header{Type: TypeHello}, make([]byte, maxHelloPayload+1))[:HeaderSize]
	if _, err := conn.Write(hdr); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("frame larger than the maximum: hello of %d bytes, maximum %d here", maxHelloPayload+1, maxHelloPayload)
	poll.Until(t, 5*time.Second, "the secondary to refuse the frame", func() bool { return strings.Contains(s.log.String(), want) })
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, conn); err != nil {
		t.Fatalf("connection not closed: %v", err)
	}
	if maxHelloPayload != 167 {
		t.Fatalf("a Hello is %d bytes at most; update this test and doc.go", maxHelloPayload)
	}
	writeThrough(t, s)
}

// TestHandshakeSlots: with MaxHandshakes connections being authenticated,
// another one is closed at once and counted; the refusals are logged at
// most once per second with their count; once the slots free up, the
// primary gets in.
func TestHandshakeSlots(t *testing.T) {
	cfg := testConfig("b")
	cfg.MaxHandshakes = 2
	cfg.Timeout = time.Minute // idle handshakes hold their slots
	s := startSecondaryWith(t, cfg)
	var now time.Time
	var clock sync.Mutex
	s.ln.shedLog.SetClock(func() time.Time { clock.Lock(); defer clock.Unlock(); return now })
	advance := func(d time.Duration) { clock.Lock(); now = now.Add(d); clock.Unlock() }
	advance(time.Hour)

	var idle []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", s.ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle = append(idle, c)
	}
	// The listener takes slots in its accept loop, in accept order: the
	// third connection finds both taken.
	shed := func(n int) {
		for range n {
			c, err := net.Dial("tcp", s.ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("a connection over the limit was not closed at once: %v", err)
			}
			c.Close()
		}
	}
	shed(5)
	advance(500 * time.Millisecond)
	shed(3)
	advance(600 * time.Millisecond)
	shed(1)
	if got := s.ln.Shed(); got != 9 {
		t.Fatalf("shed %d connections, want 9", got)
	}
	lines := strings.Count(s.log.String(), "too many unauthenticated connections")
	if lines != 2 || !strings.Contains(s.log.String(), "closed=1 limit=2") || !strings.Contains(s.log.String(), "closed=8 limit=2") {
		t.Fatalf("%d log lines, want 2 (closed=1 at once, closed=8 a second later):\n%s", lines, s.log)
	}
	rejected := s.ln.Rejected()
	for _, c := range idle {
		c.Close()
	}
	poll.Until(t, 5*time.Second, "the idle handshakes to end", func() bool { return s.ln.Rejected() == rejected+2 })
	writeThrough(t, s)
}

// TestHelloNodeID: a Hello's node ID must be 1 to 64 of A-Z a-z 0-9 . _ -,
// on the way out and on the way in.
func TestHelloNodeID(t *testing.T) {
	for _, id := range []string{"a", "host-1.example_x"} {
		b, err := (&Hello{Version: ProtocolVersion, NodeID: id}).MarshalBinary()
		if err != nil {
			t.Fatalf("%q: %v", id, err)
		}
		var h Hello
		if err := h.UnmarshalBinary(b); err != nil || h.NodeID != id {
			t.Fatalf("%q: %v, %q", id, err, h.NodeID)
		}
	}
	good, _ := (&Hello{Version: ProtocolVersion, NodeID: "abc"}).MarshalBinary()
	for _, id := range []string{"a b", "a/b", "é.", "a\x00c"} {
		if _, err := (&Hello{NodeID: id}).MarshalBinary(); err == nil {
			t.Errorf("%q marshaled", id)
		}
		if len(id) != 3 {
			continue
		}
		b := bytes.Clone(good)
		copy(b[3:6], id) // the same length, other bytes
		var h Hello
		if err := h.UnmarshalBinary(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("hello from %q: %v, want ErrMalformed", id, err)
		}
	}
}
