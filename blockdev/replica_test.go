package blockdev

import (
	"bytes"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/transport"
)

// gatedDevice is an in-memory Device whose writes to chosen offsets block
// until released, and which records the order of completed writes and the
// highest number of writes it ran at once.
type gatedDevice struct {
	mu      sync.Mutex
	data    []byte
	gates   map[int64]chan struct{}
	order   []int64 // offsets, in completion order
	flushes int

	running, maxRunning atomic.Int32
}

func newGatedDevice(size int) *gatedDevice {
	return &gatedDevice{data: make([]byte, size), gates: map[int64]chan struct{}{}}
}

func (d *gatedDevice) gate(off int64) chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := make(chan struct{})
	d.gates[off] = c
	return c
}

func (d *gatedDevice) ReadAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return copy(p, d.data[off:]), nil
}

func (d *gatedDevice) WriteAt(p []byte, off int64) (int, error) {
	n := d.running.Add(1)
	for {
		m := d.maxRunning.Load()
		if n <= m || d.maxRunning.CompareAndSwap(m, n) {
			break
		}
	}
	defer d.running.Add(-1)
	d.mu.Lock()
	g := d.gates[off]
	delete(d.gates, off)
	d.mu.Unlock()
	if g != nil {
		<-g
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.order = append(d.order, off)
	return copy(d.data[off:], p), nil
}

func (d *gatedDevice) Flush() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.flushes++
	return nil
}

func (d *gatedDevice) Trim(off, n int64) error {
	_, err := d.WriteAt(make([]byte, n), off)
	return err
}
func (d *gatedDevice) Size() int64  { return int64(len(d.data)) }
func (d *gatedDevice) Close() error { return nil }

func TestReplicaOrdersOverlapsAndParallelizesTheRest(t *testing.T) {
	dev := newGatedDevice(1 << 20)
	r := NewReplica(dev, 4096, nil)
	h := newRequestHarness(t, r)

	release := dev.gate(0)
	first := bytes.Repeat([]byte{1}, 8192)
	second := bytes.Repeat([]byte{2}, 4096)
	h.write(1, 0, first) // blocks 0-1, held at the gate
	h.waitFor(t, func() bool { return dev.running.Load() == 1 })
	h.write(2, 4096, second) // overlaps block 1: must wait for seq 1
	for i := range 4 {       // independent writes: must not wait
		h.write(uint64(3+i), int64(64+i)*4096, bytes.Repeat([]byte{9}, 4096))
	}
	h.waitAcked(t, 3, 4, 5, 6)
	if h.acked(1) || h.acked(2) {
		t.Fatal("seq 1 or 2 acknowledged while seq 1 is held")
	}
	close(release)
	h.waitAcked(t, 1, 2)
	r.Wait()

	got := make([]byte, 8192)
	dev.ReadAt(got, 0)
	want := append(bytes.Repeat([]byte{1}, 4096), second...)
	if !bytes.Equal(got, want) {
		t.Fatal("block 1 does not hold the later write")
	}
	if idx(dev.order, 0) > idx(dev.order, 4096) {
		t.Fatalf("overlapping writes applied out of order: %v", dev.order)
	}
	// They were applied while seq 1 was still inside the device.
	if dev.maxRunning.Load() < 2 {
		t.Fatalf("independent writes ran one at a time (max %d at once)", dev.maxRunning.Load())
	}
	if st := r.Status(); st.AppliedSeq != 6 || st.Pending != 0 {
		t.Fatalf("status = %+v, want applied seq 6 and nothing pending", st)
	}
}

func TestReplicaFlushIsABarrier(t *testing.T) {
	dev := newGatedDevice(1 << 20)
	r := NewReplica(dev, 4096, nil)
	h := newRequestHarness(t, r)
	release := dev.gate(0)
	h.write(1, 0, make([]byte, 4096))
	h.flush(2)
	h.write(3, 1<<19, make([]byte, 4096)) // independent of seq 1, but after the barrier
	h.waitFor(t, func() bool { return dev.running.Load() == 1 })
	if h.acked(2) || h.acked(3) {
		t.Fatal("flush or the write after it completed before the earlier write")
	}
	close(release)
	h.waitAcked(t, 1, 2, 3)
	if got := dev.order; len(got) != 2 || got[0] != 0 || got[1] != 1<<19 {
		t.Fatalf("apply order = %v, want [0 %d]", got, 1<<19)
	}
	if dev.flushes != 1 {
		t.Fatalf("flushes = %d", dev.flushes)
	}
}

func idx(s []int64, v int64) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

// requestHarness feeds requests to a Handler through a real transport
// session on 127.0.0.1 and records which sequence numbers were acked.
type requestHarness struct {
	sess *transport.Session
	mu   sync.Mutex
	done map[uint64]error
	seqs map[uint64]bool
}

func newRequestHarness(t *testing.T, h transport.Handler) *requestHarness {
	t.Helper()
	sec, pri := testConfigs()
	ln, err := transport.Listen("127.0.0.1:0", sec)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	served := make(chan struct{})
	go func() {
		defer close(served)
		ctx, cancel := contextUntil(stop)
		defer cancel()
		_ = ln.Serve(ctx, h)
	}()
	sess, err := transport.Dial(t.Context(), ln.Addr().String(), pri)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close(); close(stop); <-served })
	return &requestHarness{sess: sess, done: map[uint64]error{}, seqs: map[uint64]bool{}}
}

func (h *requestHarness) track(seq uint64, c *transport.Call, err error) {
	if err != nil {
		panic(err)
	}
	go func() {
		err := c.Wait()
		h.mu.Lock()
		h.done[seq] = err
		h.mu.Unlock()
	}()
}

func (h *requestHarness) write(seq uint64, off int64, data []byte) {
	c, err := h.sess.SubmitWrite(off, data)
	h.track(seq, c, err)
}

func (h *requestHarness) flush(seq uint64) {
	c, err := h.sess.SubmitFlush()
	h.track(seq, c, err)
}

func (h *requestHarness) acked(seq uint64) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	err, ok := h.done[seq]
	return ok && err == nil
}

func (h *requestHarness) waitAcked(t *testing.T, seqs ...uint64) {
	t.Helper()
	h.waitFor(t, func() bool {
		for _, s := range seqs {
			if !h.acked(s) {
				return false
			}
		}
		return true
	})
}

func (h *requestHarness) waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	waitUntil(t, cond)
}

// waitUntil polls cond until it holds, failing the test after 5 s.
func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5 s")
		}
		time.Sleep(2 * time.Millisecond)
	}
}
