package blockdev

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
)

// TestFenceSuspendsUnshippedWrites: without its peer, a write is not
// acknowledged until the fence committed; once per disconnection.
func TestFenceSuspendsUnshippedWrites(t *testing.T) {
	p := newPair(t)
	sess := p.sess
	var calls atomic.Int32
	release := make(chan struct{})
	p.mirror.SetFence(func(ctx context.Context) error {
		calls.Add(1)
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	// Connected: writes ship and never fence.
	if _, err := p.mirror.WriteAt(make([]byte, 4096), 0); err != nil || calls.Load() != 0 {
		t.Fatalf("connected write: %v, %d fence calls", err, calls.Load())
	}
	p.mirror.SetPeer(nil)
	done := make(chan error, 1)
	go func() { _, err := p.mirror.WriteAt(make([]byte, 4096), 4096); done <- err }()
	waitUntil(t, func() bool { return calls.Load() == 1 })
	select {
	case err := <-done:
		t.Fatalf("a write returned (%v) before the peer was marked outdated", err)
	default:
	}
	if !p.mirror.Status().Suspended {
		t.Fatal("status does not say suspended")
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := p.mirror.WriteAt(make([]byte, 4096), 8192); err != nil || calls.Load() != 1 {
		t.Fatalf("second write: %v, %d fence calls; want no new call", err, calls.Load())
	}
	// A new connection, then a new loss: fenced again.
	p.mirror.SetPeer(sess)
	p.mirror.SetPeer(nil)
	if _, err := p.mirror.WriteAt(make([]byte, 4096), 12288); err != nil || calls.Load() != 2 {
		t.Fatalf("write after a second loss: %v, %d fence calls; want 2", err, calls.Load())
	}
}

func TestFenceRefusalFailsWrites(t *testing.T) {
	p := newPair(t)
	var calls atomic.Int32
	lost := errors.New("stale epoch")
	p.mirror.SetFence(func(context.Context) error { calls.Add(1); return lost })
	p.mirror.SetPeer(nil)
	for i := range 2 {
		if _, err := p.mirror.WriteAt(make([]byte, 4096), 0); !errors.Is(err, ErrFenced) || !errors.Is(err, lost) {
			t.Fatalf("write %d = %v, want ErrFenced wrapping the refusal", i, err)
		}
	}
	if calls.Load() != 1 {
		t.Fatalf("%d fence calls, want 1: a refusal is final", calls.Load())
	}
}

func TestCloseCancelsASuspendedWrite(t *testing.T) {
	p := newPair(t)
	entered := make(chan struct{})
	p.mirror.SetFence(func(ctx context.Context) error { close(entered); <-ctx.Done(); return ctx.Err() })
	p.mirror.SetPeer(nil)
	done := make(chan error, 1)
	go func() { _, err := p.mirror.WriteAt(make([]byte, 4096), 0); done <- err }()
	<-entered
	if err := p.mirror.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Fatalf("suspended write = %v, want ErrClosed", err)
	}
}
