package wanlink

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"
)

// echo serves an echo server until the test ends and returns its address.
func echo(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return ln.Addr().String()
}

func relay(t *testing.T, cfg Config) net.Conn {
	t.Helper()
	r, err := Listen(echo(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		if err := r.Close(); err != nil {
			t.Error(err)
		}
	})
	return c
}

// A round trip through the relay takes at least the RTT: the delay is a
// lower bound the relay guarantees, whatever the machine's load.
func TestRoundTripTakesTheRTT(t *testing.T) {
	const rtt = 20 * time.Millisecond
	c := relay(t, Config{RTT: rtt})
	buf := make([]byte, 1)
	for i := range 5 {
		start := time.Now()
		if _, err := c.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); took < rtt {
			t.Fatalf("round trip %d took %v, less than the RTT %v", i, took, rtt)
		}
		if buf[0] != byte(i) {
			t.Fatalf("round trip %d echoed %d", i, buf[0])
		}
	}
}

// With jitter the bytes still arrive whole and in order, and a capped
// link takes at least size/bandwidth to carry them (each way).
func TestJitterKeepsOrderAndCapLimitsRate(t *testing.T) {
	const size, bw = 1 << 20, 8 << 20 // 1 MiB at 8 MiB/s: at least 125 ms
	c := relay(t, Config{RTT: 4 * time.Millisecond, Jitter: 2 * time.Millisecond, Bandwidth: bw})
	want := make([]byte, size)
	for i := range want {
		want[i] = byte(rand.Uint32())
	}
	start := time.Now()
	go func() {
		for off := 0; off < size; off += 1000 { // many small chunks, each jittered
			if _, err := c.Write(want[off:min(off+1000, size)]); err != nil {
				return
			}
		}
	}()
	got := make([]byte, size)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the bytes came back changed or out of order")
	}
	if took, least := time.Since(start), time.Duration(size)*time.Second/bw; took < least {
		t.Fatalf("1 MiB took %v through a %d B/s link, less than %v", took, bw, least)
	}
}

// Closing the relay cuts its connections: the client sees the end.
func TestCloseCutsConnections(t *testing.T) {
	r, err := Listen(echo(t), Config{RTT: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", r.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Read(buf); err == nil {
		t.Fatal("read after the relay closed succeeded")
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the connection stayed open after the relay closed")
	}
}

func TestNegativeSettingRefused(t *testing.T) {
	if _, err := Listen("127.0.0.1:1", Config{RTT: -time.Millisecond}); err == nil {
		t.Fatal("a negative RTT was accepted")
	}
}
