package replica

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/internal/peertest"
	"github.com/ldmirror/ldmirror/internal/poll"

	"github.com/ldmirror/ldmirror/transport"
)

// gatedDevice is an in-memory blockdev.Device whose reads and writes at chosen
// offsets block until released, and which records the order of completed
// writes, the highest number of writes it ran at once and how many reads
// are held.
type gatedDevice struct {
	mu      sync.Mutex
	data    []byte
	gates   map[int64]chan struct{}
	order   []int64 // offsets, in completion order
	flushes int

	running, maxRunning atomic.Int32
	readsHeld           atomic.Int32
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

// wait blocks at the gate set for off, if any, once.
func (d *gatedDevice) wait(off int64) {
	d.mu.Lock()
	g := d.gates[off]
	delete(d.gates, off)
	d.mu.Unlock()
	if g != nil {
		<-g
	}
}

func (d *gatedDevice) ReadAt(p []byte, off int64) (int, error) {
	d.readsHeld.Add(1)
	d.wait(off)
	d.readsHeld.Add(-1)
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
	d.wait(off)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.order = append(d.order, off)
	return copy(d.data[off:], p), nil
}

// flushGate is the gate offset that holds a Flush.
const flushGate = -1

func (d *gatedDevice) Flush() error {
	d.wait(flushGate)
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

// TestReplicaOrdersOverlapsAndAppliesTheRest: while a slow request (a
// resync checksum, held in its read) is in flight, a write that overlaps it
// waits for it, and writes that do not are applied and acknowledged.
func TestReplicaOrdersOverlapsAndAppliesTheRest(t *testing.T) {
	dev := newGatedDevice(1 << 20)
	r := New(dev, 4096, nil)
	h := newRequestHarness(t, r)
	before := bytes.Repeat([]byte{1}, 8192)
	dev.WriteAt(before, 0)

	release := dev.gate(0)
	key := &[transport.ChecksumKeySize]byte{1, 2, 3}
	sums, err := h.sess.SubmitChecksum(0, 8192, key) // blocks 0-1, held in its read
	if err != nil {
		t.Fatal(err)
	}
	replies := make(chan []byte, 1)
	go func() {
		reply, err := sums.WaitReply()
		h.mu.Lock()
		h.done[1] = err
		h.mu.Unlock()
		replies <- reply
	}()
	h.waitFor(t, func() bool { return dev.readsHeld.Load() == 1 })
	second := bytes.Repeat([]byte{2}, 4096)
	h.write(2, 4096, second) // overlaps block 1: must wait for seq 1
	for i := range 4 {       // independent writes: must not wait
		h.write(uint64(3+i), int64(64+i)*4096, bytes.Repeat([]byte{9}, 4096))
	}
	h.waitAcked(t, 3, 4, 5, 6)
	if h.acked(1) || h.acked(2) {
		t.Fatal("seq 1 or 2 acknowledged while seq 1 is held")
	}
	if st := r.Status(); st.AppliedSeq != 0 || st.Pending != 6 {
		t.Fatalf("status = %+v while seq 1 is held, want applied seq 0 and 6 pending", st)
	}
	close(release)
	h.waitAcked(t, 1, 2)
	r.Wait()

	// The checksum read block 1 before seq 2 overwrote it.
	if reply := <-replies; !bytes.Equal(reply, transport.BlockDigests(before, 4096, key)) {
		t.Fatalf("checksum reply %x, want the digests of the data before seq 2", reply)
	}
	got := make([]byte, 8192)
	dev.ReadAt(got, 0)
	if want := append(bytes.Repeat([]byte{1}, 4096), second...); !bytes.Equal(got, want) {
		t.Fatal("block 1 does not hold the later write")
	}
	if st := r.Status(); st.AppliedSeq != 6 || st.Pending != 0 {
		t.Fatalf("status = %+v, want applied seq 6 and nothing pending", st)
	}
}

// failingDevice fails writes at one offset with err.
type failingDevice struct {
	*gatedDevice
	at  int64
	err error
}

func (d failingDevice) WriteAt(p []byte, off int64) (int, error) {
	if off == d.at {
		return 0, d.err
	}
	return d.gatedDevice.WriteAt(p, off)
}

// TestReplicaDetachesAFailedDisk: a write the secondary's device refuses
// is answered with an error that names it and the device's error; from
// then on the disk is failed (docs/operations.md, "A failing disk"): later
// requests are refused without touching it, until Reattach gives it back.
func TestReplicaDetachesAFailedDisk(t *testing.T) {
	dev := failingDevice{gatedDevice: newGatedDevice(1 << 20), at: 8192, err: syscall.ENOSPC}
	r := New(dev, 4096, nil)
	h := newRequestHarness(t, r)
	h.write(1, 0, make([]byte, 4096))
	h.write(2, 8192, make([]byte, 4096)) // refused by the device
	h.write(3, 16384, make([]byte, 4096))
	h.waitFor(t, func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		return len(h.done) == 3
	})
	h.mu.Lock()
	err2, err3 := h.done[2], h.done[3]
	h.mu.Unlock()
	if !h.acked(1) {
		t.Fatal("the write before the failure was not acknowledged")
	}
	if !errors.Is(err2, transport.ErrRemoteIO) || !strings.Contains(err2.Error(), "offset 8192") || !strings.Contains(err2.Error(), "no space left on device") {
		t.Fatalf("failed write: %v; want ErrRemoteIO naming offset 8192 and ENOSPC", err2)
	}
	if !errors.Is(err3, transport.ErrRemoteIO) || !strings.Contains(err3.Error(), "disk failed") || !strings.Contains(err3.Error(), "ENOSPC") {
		t.Fatalf("write after the failure: %v; want a refusal naming the failed disk and ENOSPC", err3)
	}
	failed, replaced := r.DiskWatch()
	select {
	case <-failed:
	default:
		t.Fatal("DiskWatch's failed not closed")
	}
	if st := r.Status(); st.Failures != 2 || st.Writes != 1 {
		t.Fatalf("status %+v, want 2 failures and 1 write: nothing applied after the failure", st)
	}
	r.Reattach(failingDevice{gatedDevice: newGatedDevice(1 << 20), at: 32768, err: syscall.EIO})
	select {
	case <-replaced:
	default:
		t.Fatal("Reattach did not close the replaced channel")
	}
	h.write(4, 16384, make([]byte, 4096))
	h.waitFor(t, func() bool { return h.acked(4) })
	if r.DiskError() != nil {
		t.Fatalf("after Reattach the disk still counts as failed: %v", r.DiskError())
	}
	// The new disk's failure is watched afresh.
	failed, _ = r.DiskWatch()
	h.write(5, 32768, make([]byte, 4096))
	h.waitFor(t, func() bool {
		select {
		case <-failed:
			return true
		default:
			return false
		}
	})
}

func TestReplicaFlushIsABarrier(t *testing.T) {
	dev := newGatedDevice(1 << 20)
	r := New(dev, 4096, nil)
	h := newRequestHarness(t, r)
	release := dev.gate(flushGate)
	h.write(1, 0, make([]byte, 4096))
	h.flush(2)                            // held in the device
	h.write(3, 1<<19, make([]byte, 4096)) // independent of seq 1, but after the barrier
	h.waitAcked(t, 1)
	// Seqs 3 and 4 are received (3 pending with the flush) but must wait.
	h.write(4, 1<<19+4096, make([]byte, 4096))
	h.waitFor(t, func() bool { return r.Status().Pending == 3 })
	if h.acked(2) || h.acked(3) || h.acked(4) {
		t.Fatal("the flush or a write after it completed while the flush was held")
	}
	close(release)
	h.waitAcked(t, 1, 2, 3, 4)
	if got := dev.order; len(got) != 3 || got[0] != 0 || got[1]+got[2] != 1<<20+4096 {
		t.Fatalf("apply order = %v, want 0 first, then %d and %d", got, 1<<19, 1<<19+4096)
	}
	if dev.flushes != 1 {
		t.Fatalf("flushes = %d", dev.flushes)
	}
}

// TestReplicaQueuesWritesHeldByABarrier: the writes that wait behind a
// flush are applied one at a time in arrival order once it completes, by
// one goroutine, not released all at once to contend for the device.
func TestReplicaQueuesWritesHeldByABarrier(t *testing.T) {
	dev := newGatedDevice(1 << 20)
	r := New(dev, 4096, nil)
	h := newRequestHarness(t, r)
	release := dev.gate(flushGate)
	h.flush(1)
	const n = 16
	var want []int64
	for i := range n { // independent of each other, all after the barrier
		off := int64((i*7)%n) * 4096
		want = append(want, off)
		h.write(uint64(2+i), off, bytes.Repeat([]byte{byte(i)}, 4096))
	}
	h.waitFor(t, func() bool { return r.Status().Pending == n+1 })
	close(release)
	seqs := make([]uint64, 0, n+1)
	for i := range n + 1 {
		seqs = append(seqs, uint64(1+i))
	}
	h.waitAcked(t, seqs...)
	r.Wait()
	if got := dev.order; !slices.Equal(got, want) {
		t.Fatalf("apply order %v, want arrival order %v", got, want)
	}
	if m := dev.maxRunning.Load(); m != 1 {
		t.Fatalf("%d writes ran at once, want 1", m)
	}
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
	sec, pri := peertest.Configs(64 << 20)
	ln, err := transport.Listen("127.0.0.1:0", sec)
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	served := make(chan struct{})
	go func() {
		defer close(served)
		ctx, cancel := peertest.ContextUntil(stop)
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
	poll.Until(t, 5*time.Second, "the condition", cond)
}
