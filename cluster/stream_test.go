package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

func newTestMux(t *testing.T, id string, secret []byte) *mux {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m, err := newMux(ln, ln.Addr().String(), id, secret, 2*time.Second, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	// The RPC channel answers "rpc:" and echoes one line.
	m.rpc = func(c net.Conn) {
		line := make([]byte, 5)
		if _, err := io.ReadFull(c, line); err == nil {
			c.Write(append([]byte("rpc:"), line...))
		}
	}
	m.wg.Add(1)
	go m.serve()
	t.Cleanup(m.close)
	return m
}

// accepted returns the next connection the mux hands to raft.
func accepted(t *testing.T, m *mux) net.Conn {
	t.Helper()
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := raftLayer{m}.Accept()
		ch <- result{c, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatal(r.err)
		}
		return r.c
	case <-time.After(5 * time.Second):
		t.Fatal("no raft connection accepted")
	}
	return nil
}

// tlsListener is a plain TLS server for impostors and relays.
func tlsListener(t *testing.T) net.Listener {
	t.Helper()
	cert, err := selfSigned()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func ctx5(t *testing.T) context.Context { return ctxFor(t, 5*time.Second) }

// TestStreamAuth: only a dialer with the secret reaches raft; a refused one
// is never handed over, so the first connection raft sees is the good one.
func TestStreamAuth(t *testing.T) {
	server := newTestMux(t, "a", testSecret)
	good := newTestMux(t, "b", testSecret)
	bad := newTestMux(t, "x", []byte("not-the-cluster-secret"))

	if _, err := bad.dial(ctx5(t), server.advertise, chanRaft); !errors.Is(err, ErrAuth) {
		t.Fatalf("dial with wrong secret: %v, want ErrAuth", err)
	}
	conn, err := good.dial(ctx5(t), server.advertise, chanRaft)
	if err != nil {
		t.Fatalf("dial with the secret: %v", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte("ping!")); err != nil {
		t.Fatal(err)
	}
	peer := accepted(t, server)
	got := make([]byte, 5)
	if _, err := io.ReadFull(peer, got); err != nil || string(got) != "ping!" {
		t.Fatalf("raft side read %q, %v; want the good dialer's bytes", got, err)
	}
	if _, err := peer.Write([]byte("pong!")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(conn, got); err != nil || string(got) != "pong!" {
		t.Fatalf("dialer read %q, %v", got, err)
	}

	// The RPC channel goes to the RPC handler, not to raft.
	rc, err := good.dial(ctx5(t), server.advertise, chanRPC)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	rc.Write([]byte("hello"))
	reply, err := io.ReadAll(rc)
	if err != nil || string(reply) != "rpc:hello" {
		t.Fatalf("rpc channel answered %q, %v", reply, err)
	}
}

// TestStreamRefusesStrangers: plain TCP, TLS without our hello, and an
// unknown channel are closed without reaching raft.
func TestStreamRefusesStrangers(t *testing.T) {
	server := newTestMux(t, "a", testSecret)
	tests := []struct {
		name  string
		dial  func() (net.Conn, error)
		hello []byte
	}{
		{"plain tcp", func() (net.Conn, error) { return net.Dial("tcp", server.advertise) }, []byte("GET / HTTP/1.0\r\n\r\n")},
		{"tls, bad magic", func() (net.Conn, error) {
			return tls.Dial("tcp", server.advertise, &tls.Config{InsecureSkipVerify: true})
		}, bytes.Repeat([]byte("z"), 64)},
		{"tls, unknown channel", func() (net.Conn, error) {
			return tls.Dial("tcp", server.advertise, &tls.Config{InsecureSkipVerify: true})
		}, append([]byte(authMagic+"Q\x01x"), make([]byte, macLen)...)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tc.dial()
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			c.Write(tc.hello)
			_, err = io.ReadAll(c)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("server kept a stranger's connection open")
			}
		})
	}
	// After all that, the first connection raft is handed is a member's.
	good := newTestMux(t, "b", testSecret)
	conn, err := good.dial(ctx5(t), server.advertise, chanRaft)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("good!"))
	peer := accepted(t, server)
	defer peer.Close()
	got := make([]byte, 5)
	if _, err := io.ReadFull(peer, got); err != nil || string(got) != "good!" {
		t.Fatalf("raft was handed %q, %v; want the member's connection", got, err)
	}
}

// TestStreamBindsProofToSession: a relay that terminates TLS on both sides
// (a man in the middle) cannot pass a member's proof on, even though it
// forwards every byte.
func TestStreamBindsProofToSession(t *testing.T) {
	server := newTestMux(t, "a", testSecret)
	client := newTestMux(t, "b", testSecret)
	ln := tlsListener(t)
	go func() {
		in, err := ln.Accept()
		if err != nil {
			return
		}
		defer in.Close()
		out, err := tls.Dial("tcp", server.advertise, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			return
		}
		defer out.Close()
		go io.Copy(out, in)
		io.Copy(in, out)
	}()
	_, err := client.dial(ctx5(t), ln.Addr().String(), chanRaft)
	if !errors.Is(err, ErrAuth) {
		t.Fatalf("dial through a TLS-terminating relay: %v, want ErrAuth", err)
	}
}

// TestStreamChecksAcceptorProof: a dialer does not trust an acceptor that
// says "ok" without proving the secret.
func TestStreamChecksAcceptorProof(t *testing.T) {
	client := newTestMux(t, "b", testSecret)
	ln := tlsListener(t)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		hello := make([]byte, len(authMagic)+2+1+macLen) // node id "b"
		if _, err := io.ReadFull(c, hello); err != nil {
			return
		}
		c.Write(append([]byte{authOK}, make([]byte, macLen)...))
		io.Copy(io.Discard, c)
	}()
	_, err := client.dial(ctx5(t), ln.Addr().String(), chanRaft)
	if !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), "wrong proof") {
		t.Fatalf("dial to an impostor: %v, want ErrAuth (wrong proof)", err)
	}
}

// TestRemoteErrors: sentinel errors survive the trip from the leader.
func TestRemoteErrors(t *testing.T) {
	for code, sentinel := range errorCodes {
		wrapped := errors.Join(errors.New("context"), sentinel)
		c, msg := encodeError(wrapped)
		if c != code {
			t.Errorf("%v encoded as %q, want %q", sentinel, c, code)
		}
		got := decodeError(c, msg)
		if !errors.Is(got, sentinel) || got.Error() != wrapped.Error() {
			t.Errorf("%q decoded to %v", code, got)
		}
	}
	if err := decodeError("", ""); err != nil {
		t.Errorf("no error decoded to %v", err)
	}
	other := decodeError(encodeError(errors.New("disk on fire")))
	if other == nil || other.Error() != "disk on fire" || errors.Is(other, ErrNoQuorum) {
		t.Errorf("plain error decoded to %v", other)
	}
}
