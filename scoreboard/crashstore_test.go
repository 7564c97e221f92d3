package scoreboard

import (
	"errors"
	"sync"
	"testing"
)

// crashStore is an in-memory Store that records every write and sync, so a
// test can build the image a crash at any point would leave: everything
// synced, plus any choice of the unsynced writes, each possibly torn (the
// idea of Pebble's vfs.NewCrashableMem).
type crashStore struct {
	mu    sync.Mutex
	data  []byte // what reads see: every write applied
	base  []byte // the durable contents before the first op (nil: zeros)
	ops   []storeOp
	syncs int

	// hook, if set, is called at every op with the store unlocked, before
	// the op takes effect; it may block (a gate) or return an error to
	// inject a failure.
	hook func(op storeOp) error
	// version, if set, labels each op with the model's state at that time.
	version func() int
}

type storeOp struct {
	sync    bool
	off     int64
	data    []byte
	version int
}

func newCrashStore(size int64) *crashStore { return &crashStore{data: make([]byte, size)} }

// storeFor returns an empty store sized for geom with default options.
func storeFor(t testing.TB, geom Geometry, opts Options) *crashStore {
	t.Helper()
	o, err := opts.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	return newCrashStore(newLayout(geom.withDefaults(), uint32(o.ALSlots)).size)
}

var errShortRead = errors.New("crashStore: read past end")

func (c *crashStore) ReadAt(p []byte, off int64) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if off < 0 || off+int64(len(p)) > int64(len(c.data)) {
		return 0, errShortRead
	}
	return copy(p, c.data[off:]), nil
}

func (c *crashStore) WriteAt(p []byte, off int64) (int, error) {
	op := storeOp{off: off, data: append([]byte(nil), p...)}
	if err := c.record(op); err != nil {
		return 0, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if off < 0 || off+int64(len(p)) > int64(len(c.data)) {
		return 0, errors.New("crashStore: write past end")
	}
	copy(c.data[off:], p)
	return len(p), nil
}

func (c *crashStore) Sync() error {
	if err := c.record(storeOp{sync: true}); err != nil {
		return err
	}
	c.mu.Lock()
	c.syncs++
	c.mu.Unlock()
	return nil
}

func (c *crashStore) record(op storeOp) error {
	c.mu.Lock()
	hook, version := c.hook, c.version
	c.mu.Unlock()
	if hook != nil {
		if err := hook(op); err != nil {
			return err
		}
	}
	if version != nil {
		op.version = version()
	}
	c.mu.Lock()
	c.ops = append(c.ops, op)
	c.mu.Unlock()
	return nil
}

func (c *crashStore) opCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.ops)
}

func (c *crashStore) syncCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.syncs
}

// crashAt returns the store a crash after the first k ops leaves: every
// write up to the last sync among them, then, for each later write in order,
// whatever keep returns (nil drops it, a prefix tears it).
func (c *crashStore) crashAt(k int, keep func(i int, w storeOp) []byte) *crashStore {
	c.mu.Lock()
	defer c.mu.Unlock()
	img := newCrashStore(int64(len(c.data)))
	copy(img.data, c.base)
	last := 0
	for i, op := range c.ops[:k] {
		if op.sync {
			last = i + 1
		}
	}
	for _, op := range c.ops[:last] {
		if !op.sync {
			copy(img.data[op.off:], op.data)
		}
	}
	for i, op := range c.ops[last:k] {
		if op.sync {
			continue
		}
		if p := keep(i, op); p != nil {
			copy(img.data[op.off:], p)
		}
	}
	img.base = append([]byte(nil), img.data...)
	return img
}

// keepNone drops every unsynced write.
func keepNone(int, storeOp) []byte { return nil }

// eachCrashPoint calls fn for every crash point k = 0..len(ops): durable is
// the synced image after the first k ops (fn must not keep or change it) and
// unsynced the writes after the last sync among them.
func (c *crashStore) eachCrashPoint(fn func(k int, durable []byte, unsynced []storeOp)) {
	c.mu.Lock()
	ops := c.ops
	durable := make([]byte, len(c.data))
	copy(durable, c.base)
	c.mu.Unlock()
	last := 0
	for k := 0; k <= len(ops); k++ {
		if k > 0 && ops[k-1].sync {
			for _, op := range ops[last : k-1] {
				if !op.sync {
					copy(durable[op.off:], op.data)
				}
			}
			last = k
		}
		var unsynced []storeOp
		for _, op := range ops[last:k] {
			if !op.sync {
				unsynced = append(unsynced, op)
			}
		}
		fn(k, durable, unsynced)
	}
}

func (c *crashStore) setVersion(f func() int) {
	c.mu.Lock()
	c.version = f
	c.mu.Unlock()
}
