package transport

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"
)

func TestPeerDeathFailsPendingCalls(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// A secondary that authenticates, then never acks and dies.
	go func() {
		conn, fr, ok := acceptSecondary(ln)
		if !ok {
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
		conn, fr, ok := acceptSecondary(ln)
		if !ok {
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

// acceptSecondary accepts one connection on ln and authenticates it as
// secondary b; ok is false if either failed (the connection is closed).
func acceptSecondary(ln net.Listener) (conn net.Conn, fr *FrameReader, ok bool) {
	conn, err := ln.Accept()
	if err != nil {
		return nil, nil, false
	}
	cfg := defaulted(testConfig("b"))
	fr = NewFrameReader(conn)
	if _, err := handshake(conn, fr, &cfg, false, ""); err != nil {
		conn.Close()
		return nil, nil, false
	}
	return conn, fr, true
}
