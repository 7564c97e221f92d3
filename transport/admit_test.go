package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/internal/poll"
)

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

// oldHello is the Hello of a peer that speaks protocol version 3, which
// has no Stage request: it would apply a resync's blocks to its volume as
// they come.
func oldHello(node string) []byte {
	b, err := (&Hello{Version: 3, NodeID: node, VolumeUUID: [16]byte{1, 2, 3, 4}, Size: testSize, BlockSize: 4096, Nonce: [32]byte{9}}).MarshalBinary()
	if err != nil {
		panic(err)
	}
	return b
}

// TestOldVersionRefused: a peer on protocol version 3 (no Stage request)
// is refused on either side, with both versions named, before any request
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
