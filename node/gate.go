package node

import (
	"sync"
	"time"

	"github.com/ldmirror/ldmirror/blockdev"
)

// writeGate is the device a primary term exports: the mirror, until the
// term ends or a swap holds it. Holding it lets the writes in flight
// finish and makes new ones wait; closing it fails them for good.
type writeGate struct {
	blockdev.Device
	observer Observer // nil: writes are not timed
	mu       sync.RWMutex
	err      error // once set, writes fail with it
}

func (g *writeGate) enter() error {
	g.mu.RLock()
	if g.err != nil {
		g.mu.RUnlock()
		return g.err
	}
	return nil
}

// WriteAt writes through the mirror unless the gate is closed.
func (g *writeGate) WriteAt(p []byte, off int64) (int, error) {
	if err := g.enter(); err != nil {
		return 0, err
	}
	defer g.mu.RUnlock()
	if g.observer == nil {
		return g.Device.WriteAt(p, off)
	}
	start := time.Now()
	n, err := g.Device.WriteAt(p, off)
	if err == nil {
		g.observer.ObserveWrite(time.Since(start))
	}
	return n, err
}

// Trim trims through the mirror unless the gate is closed.
func (g *writeGate) Trim(off, n int64) error {
	if err := g.enter(); err != nil {
		return err
	}
	defer g.mu.RUnlock()
	return g.Device.Trim(off, n)
}

// Flush flushes through the mirror unless the gate is closed.
func (g *writeGate) Flush() error {
	if err := g.enter(); err != nil {
		return err
	}
	defer g.mu.RUnlock()
	return g.Device.Flush()
}

// Close leaves the mirror to the term: the export does not own it.
func (g *writeGate) Close() error { return nil }

// hold waits for the writes in flight and makes new ones wait until
// release.
func (g *writeGate) hold() { g.mu.Lock() }

// release lets the waiting writes go on, or fail with err if it is not nil.
func (g *writeGate) release(err error) {
	if g.err == nil {
		g.err = err
	}
	g.mu.Unlock()
}

// close fails every write from now on with err, after those in flight.
func (g *writeGate) close(err error) {
	g.hold()
	g.release(err)
}
