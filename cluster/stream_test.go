package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/internal/pkitest"
	"github.com/ldmirror/ldmirror/internal/poll"
	"github.com/ldmirror/ldmirror/pki"
)

func newTestMux(t *testing.T, creds *pki.Source) *mux {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := newMux(ln, ln.Addr().String(), creds, 2*time.Second, testLogger())
	// The RPC channel answers "rpc:", the caller's identity, ":" and echoes
	// one 5-byte line.
	m.rpc = func(c net.Conn, from pki.Identity) {
		line := make([]byte, 5)
		if _, err := io.ReadFull(c, line); err == nil {
			c.Write(append([]byte("rpc:"+from.String()+":"), line...))
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

func ctx5(t *testing.T) context.Context { return ctxFor(t, 5*time.Second) }

// TestStreamAuth: only a dialer with a certificate of the cluster's CA
// reaches raft; a refused one is never handed over, so the first
// connection raft sees is the good one. The RPC handler learns the
// dialer's identity from its certificate.
func TestStreamAuth(t *testing.T) {
	ca := pkitest.New(t)
	server := newTestMux(t, ca.Source("a", pki.RoleData))
	good := newTestMux(t, ca.Source("w", pki.RoleWitness))
	bad := newTestMux(t, pkitest.New(t).Source("x", pki.RoleData))

	if _, err := bad.dial(ctx5(t), server.advertise, chanRaft); !errors.Is(err, ErrAuth) {
		t.Fatalf("dial with another CA's certificate: %v, want ErrAuth", err)
	}
	conn, err := good.dial(ctx5(t), server.advertise, chanRaft)
	if err != nil {
		t.Fatalf("dial with the CA's certificate: %v", err)
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

	// The RPC channel goes to the RPC handler, not to raft, with the
	// identity the dialer's certificate names.
	rc, err := good.dial(ctx5(t), server.advertise, chanRPC)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	rc.Write([]byte("hello"))
	reply, err := io.ReadAll(rc)
	if err != nil || string(reply) != "rpc:witness w:hello" {
		t.Fatalf("rpc channel answered %q, %v", reply, err)
	}
}

// TestStreamRefusesStrangers: plain TCP, TLS without a certificate, TLS
// with a certificate of another CA, and a member's certificate with a bad
// magic or an unknown channel are closed without reaching raft.
func TestStreamRefusesStrangers(t *testing.T) {
	ca := pkitest.New(t)
	server := newTestMux(t, ca.Source("a", pki.RoleData))
	member := ca.Source("b", pki.RoleData).ClientConfig()
	foreign := pkitest.New(t).Source("b", pki.RoleData).ClientConfig()
	foreign.VerifyConnection = nil // it trusts the server; the server must not trust it
	tests := []struct {
		name  string
		dial  func() (net.Conn, error)
		hello []byte
	}{
		{"plain tcp", func() (net.Conn, error) { return net.Dial("tcp", server.advertise) }, []byte("GET / HTTP/1.0\r\n\r\n")},
		{"tls without a certificate", func() (net.Conn, error) {
			return tls.Dial("tcp", server.advertise, &tls.Config{InsecureSkipVerify: true})
		}, []byte(authMagic + "R")},
		{"tls, another CA's certificate", func() (net.Conn, error) {
			return tls.Dial("tcp", server.advertise, foreign)
		}, []byte(authMagic + "R")},
		{"member, bad magic", func() (net.Conn, error) {
			return tls.Dial("tcp", server.advertise, member)
		}, bytes.Repeat([]byte("z"), 64)},
		{"member, unknown channel", func() (net.Conn, error) {
			return tls.Dial("tcp", server.advertise, member)
		}, []byte(authMagic + "Q")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tc.dial()
			if err != nil {
				return // refused in the handshake already
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			c.Write(tc.hello)
			b, err := io.ReadAll(c)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("server kept a stranger's connection open")
			}
			if len(b) > 0 && b[0] == authOK {
				t.Fatalf("server answered ok: %q", b)
			}
		})
	}
	// After all that, the first connection raft is handed is a member's.
	good := newTestMux(t, ca.Source("b", pki.RoleData))
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

// TestStreamChecksAcceptor: a dialer does not talk to an acceptor whose
// certificate is not of the cluster's CA, even one that answers "ok".
func TestStreamChecksAcceptor(t *testing.T) {
	client := newTestMux(t, pkitest.New(t).Source("b", pki.RoleData))
	impostor := pkitest.New(t).Source("a", pki.RoleData).ServerConfig()
	impostor.ClientAuth, impostor.VerifyConnection = tls.NoClientCert, nil
	ln, err := tls.Listen("tcp", "127.0.0.1:0", impostor)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write([]byte{authOK})
		io.Copy(io.Discard, c)
	}()
	_, err = client.dial(ctx5(t), ln.Addr().String(), chanRaft)
	if !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), "unknown authority") {
		t.Fatalf("dial to an impostor: %v, want ErrAuth (unknown authority)", err)
	}
}

// TestStreamHandshakeSlots: with maxHandshakes connections being
// authenticated, another one is closed at once and counted, and the
// refusals are logged at most once per second.
func TestStreamHandshakeSlots(t *testing.T) {
	ca := pkitest.New(t)
	server := newTestMux(t, ca.Source("a", pki.RoleData))
	var idle []net.Conn
	for range maxHandshakes {
		c, err := net.Dial("tcp", server.advertise)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle = append(idle, c)
	}
	for range 3 {
		c, err := net.Dial("tcp", server.advertise)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("a connection over the limit was not closed at once: %v", err)
		}
		c.Close()
	}
	if got := server.shed.Load(); got != 3 {
		t.Fatalf("shed %d, want 3", got)
	}
	for _, c := range idle {
		c.Close()
	}
	// The slots free up as the idle handshakes fail: a member gets in.
	good := newTestMux(t, ca.Source("b", pki.RoleData))
	poll.Until(t, 5*time.Second, "a member to get through", func() bool {
		c, err := good.dial(ctx5(t), server.advertise, chanRPC)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// FuzzPreamble: the dialer's preamble parser never panics and accepts only
// the magic and a known channel.
func FuzzPreamble(f *testing.F) {
	f.Add([]byte(authMagic + "R"))
	f.Add([]byte(authMagic + "C"))
	f.Add([]byte(authMagic + "Q"))
	f.Add([]byte("LDMCLU1\nR"))
	f.Fuzz(func(t *testing.T, b []byte) {
		ch, err := parsePreamble(b)
		if err == nil && (string(b) != authMagic+string(ch) || ch != chanRaft && ch != chanRPC) {
			t.Fatalf("accepted %q as channel %q", b, ch)
		}
	})
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
