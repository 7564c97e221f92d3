package mirror

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/bitmap"
	"github.com/ldmirror/ldmirror/blockdev"
	"github.com/ldmirror/ldmirror/internal/peertest"
	"github.com/ldmirror/ldmirror/internal/poll"
	"github.com/ldmirror/ldmirror/journal"
	"github.com/ldmirror/ldmirror/replica"
	"github.com/ldmirror/ldmirror/transport"
)

// snapDevice is the secondary's device in the async tests: every write
// holds a read lock, so snapshot (under the write lock) sees the device
// between writes. Hooks run around each write, outside the lock.
type snapDevice struct {
	blockdev.Device
	mu     sync.RWMutex
	before atomic.Pointer[func(off int64)]
	after  atomic.Pointer[func(off int64)]
	wrote  chan struct{} // a token after each write, if there is room
}

func (d *snapDevice) WriteAt(p []byte, off int64) (int, error) {
	if h := d.before.Load(); h != nil {
		(*h)(off)
	}
	d.mu.RLock()
	n, err := d.Device.WriteAt(p, off)
	d.mu.RUnlock()
	select {
	case d.wrote <- struct{}{}:
	default:
	}
	if h := d.after.Load(); h != nil {
		(*h)(off)
	}
	return n, err
}

func (d *snapDevice) Trim(off, n int64) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.Device.Trim(off, n)
}

// snapshot returns the device's content between two writes.
func (d *snapDevice) snapshot() []byte {
	d.mu.Lock()
	defer d.mu.Unlock()
	b := make([]byte, d.Size())
	if _, err := d.Device.ReadAt(b, 0); err != nil {
		panic(err)
	}
	return b
}

// asyncPair is a primary Mirror in async mode and a secondary Replica with
// an applied-position file, over 127.0.0.1, that the test disconnects and
// reconnects.
type asyncPair struct {
	t         *testing.T
	size      int64
	mirror    *Mirror
	dirty     *bitmap.Set
	jrnl      *journal.Journal
	replica   *replica.Replica
	secondary *snapDevice
	applied   *journal.AppliedFile
	addr      string
	pri       transport.Config
	sess      *transport.Session
	priPath   string
	secPath   string
	jrnlPath  string
}

type asyncOptions struct {
	size     int64
	capacity int64
	onFull   FullPolicy
	timeout  time.Duration
	resynced func(context.Context)
	local    func(blockdev.Device) blockdev.Device // wraps the primary's device
	fence    Fence
}

func newAsyncPair(t *testing.T, o asyncOptions) *asyncPair {
	t.Helper()
	if o.size == 0 {
		o.size = 2 << 20
	}
	if o.capacity == 0 {
		o.capacity = 16 << 20
	}
	dir := t.TempDir()
	p := &asyncPair{t: t, size: o.size, priPath: newFileSized(t, "a.img", o.size), secPath: newFileSized(t, "b.img", o.size)}
	p.secondary = &snapDevice{Device: openFileSized(t, p.secPath, o.size), wrote: make(chan struct{}, 1)}
	var err error
	if p.applied, err = journal.OpenAppliedFile(filepath.Join(dir, "journal.applied")); err != nil {
		t.Fatal(err)
	}
	p.replica = replica.New(p.secondary, 4096, nil)
	p.replica.SetAppliedFile(p.applied)
	sec, pri := peertest.Configs(o.size)
	if o.timeout > 0 {
		sec.Timeout, pri.Timeout = o.timeout, o.timeout
	}
	p.pri = pri
	ln, err := transport.Listen("127.0.0.1:0", sec)
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { defer close(served); _ = ln.Serve(ctx, p.replica) }()

	p.jrnlPath = filepath.Join(dir, "journal")
	if p.jrnl, err = journal.Create(p.jrnlPath, journal.Options{Capacity: o.capacity}); err != nil {
		t.Fatal(err)
	}
	p.dirty, _ = bitmap.New(o.size, 4096)
	var local blockdev.Device = openFileSized(t, p.priPath, o.size)
	if o.local != nil {
		local = o.local(local)
	}
	p.mirror = mustNew(t, local, Config{Dirty: p.dirty, Fence: o.fence,
		Async: &AsyncConfig{Journal: p.jrnl, OnFull: o.onFull, Resynced: o.resynced}})
	t.Cleanup(func() {
		p.mirror.Close()
		if p.sess != nil {
			p.sess.Close()
		}
		cancel()
		<-served
		p.replica.Wait()
		p.secondary.Close()
		p.applied.Close()
	})
	return p
}

// connect dials the secondary and hands the session to the Mirror; the
// caller runs CatchUp.
func (p *asyncPair) connect() {
	p.t.Helper()
	s, err := transport.Dial(context.Background(), p.addr, p.pri)
	if err != nil {
		p.t.Fatal(err)
	}
	p.sess = s
	p.mirror.SetPeer(s)
}

func (p *asyncPair) catchUp() {
	p.t.Helper()
	if err := p.mirror.CatchUp(context.Background(), false); err != nil {
		p.t.Fatalf("catch-up: %v", err)
	}
}

// disconnect cuts the link: the primary goes on alone.
func (p *asyncPair) disconnect() {
	p.t.Helper()
	p.mirror.SetPeer(nil)
	p.sess.Close()
	p.sess = nil
	if st := p.mirror.Status(); st.Connected || st.Replication != StateLogging {
		p.t.Fatalf("after disconnect: %+v", st)
	}
}

// drainAndCompare waits until the peer acknowledged everything, flushes and
// compares both files.
func (p *asyncPair) drainAndCompare() {
	p.t.Helper()
	if err := p.mirror.Drain(context.Background()); err != nil {
		p.t.Fatal(err)
	}
	if err := p.mirror.Flush(); err != nil {
		p.t.Fatal(err)
	}
	if err := p.mirror.Drain(context.Background()); err != nil {
		p.t.Fatal(err)
	}
	if fileSum(p.t, p.priPath) != fileSum(p.t, p.secPath) {
		p.t.Fatal("the two files differ")
	}
	if st := p.mirror.Status(); st.DirtyBlocks != 0 || st.JournalLag != 0 {
		p.t.Fatalf("after draining: %d dirty blocks, lag %d", st.DirtyBlocks, st.JournalLag)
	}
	// The flush's barrier record told the peer to make everything durable:
	// the journal is truncated behind it.
	poll.Until(p.t, 5*time.Second, "the journal to be truncated behind the flush", func() bool {
		st := p.mirror.Status()
		return st.JournalUsed == 0 && st.PeerDurable == st.JournalNewest && st.JournalOldest == st.JournalNewest+1
	})
}

// history is the primary's write sequence: write i puts content(i) in
// block blocks[i]. Blocks never written hold zeros.
type history struct {
	blocks []int
	byBlk  map[int][]int // write indices per block, ascending
}

func newHistory() *history { return &history{byBlk: map[int][]int{}} }

func content(i int) []byte {
	b := bytes.Repeat([]byte{byte(i*7 + 1)}, 4096)
	binary.BigEndian.PutUint64(b, uint64(i)+1)
	return b
}

func (h *history) write(t *testing.T, m *Mirror, blk int) {
	t.Helper()
	i := len(h.blocks)
	if _, err := m.WriteAt(content(i), int64(blk)*4096); err != nil {
		t.Fatal(err)
	}
	h.blocks = append(h.blocks, blk)
	h.byBlk[blk] = append(h.byBlk[blk], i)
}

// prefix checks that snap is the volume after the first k writes, for some
// k, and returns k. Block b holds write w_b (or none); that is a prefix
// state if and only if the newest write present is older than the first
// missing write of every block.
func (h *history) prefix(snap []byte) (int, error) {
	newest, firstMissing := -1, len(h.blocks)
	missBlk, newestBlk := -1, -1
	zero := make([]byte, 4096)
	for b := 0; b < len(snap)/4096; b++ {
		blk := snap[b*4096 : (b+1)*4096]
		w := -1
		if !bytes.Equal(blk, zero) {
			w = int(binary.BigEndian.Uint64(blk)) - 1
			if w < 0 || w >= len(h.blocks) || h.blocks[w] != b || !bytes.Equal(blk, content(w)) {
				return 0, fmt.Errorf("block %d holds data that no write put there", b)
			}
		}
		if w > newest {
			newest, newestBlk = w, b
		}
		ws := h.byBlk[b]
		if k := sort.SearchInts(ws, w+1); k < len(ws) && ws[k] < firstMissing {
			firstMissing, missBlk = ws[k], b
		}
	}
	if newest >= firstMissing {
		return 0, fmt.Errorf("not a prefix of the write sequence: write %d (block %d) is there but write %d (block %d) is not", newest, newestBlk, firstMissing, missBlk)
	}
	return newest + 1, nil
}

// checker takes snapshots of the secondary's device and checks each.
type checker struct {
	h     *history
	dev   *snapDevice
	mu    sync.Mutex
	rng   *rand.Rand
	taken int
	bad   []error
	last  int
}

// check snapshots the device and checks the snapshot; checks run one at a
// time, so that their results are in the order the snapshots were taken.
func (c *checker) check() {
	c.mu.Lock()
	defer c.mu.Unlock()
	k, err := c.h.prefix(c.dev.snapshot())
	c.taken++
	if err != nil {
		c.bad = append(c.bad, err)
		return
	}
	if k < c.last {
		c.bad = append(c.bad, fmt.Errorf("the secondary went back from prefix %d to %d", c.last, k))
	}
	c.last = k
}

// atRandom snapshots after a random tenth of the device's writes.
func (c *checker) atRandom(off int64) {
	c.mu.Lock()
	now := c.rng.IntN(10) == 0
	c.mu.Unlock()
	if now {
		c.check()
	}
}

func (c *checker) result() (int, []error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.taken, c.bad
}

// shortDisconnect runs issue 4's scenario 3 up to the reconnect: writes
// while connected, a disconnect, writes while disconnected (the journal
// holds them all), then a reconnect with a checker on the secondary.
func shortDisconnect(t *testing.T, p *asyncPair, every bool) (*history, *checker) {
	p.connect()
	p.catchUp()
	h := newHistory()
	rng := rand.New(rand.NewPCG(3, 4))
	blocks := int(p.size / 4096)
	for range 200 {
		h.write(t, p.mirror, rng.IntN(blocks))
	}
	p.drainAndCompare()
	p.disconnect()
	for i := range 1500 {
		h.write(t, p.mirror, rng.IntN(blocks))
		if i%100 == 99 {
			if err := p.mirror.Flush(); err != nil {
				t.Fatal(err)
			}
		}
	}
	st := p.mirror.Status()
	if st.JournalOverflow || st.JournalLag < 1500 || st.Connected {
		t.Fatalf("after the disconnected writes: %+v", st)
	}
	c := &checker{h: h, dev: p.secondary, rng: rand.New(rand.NewPCG(5, 6))}
	if k, err := h.prefix(p.secondary.snapshot()); err != nil || k != 200 {
		t.Fatalf("before the catch-up the secondary is at %d, %v; want the 200 writes made while connected", k, err)
	}
	hook := c.atRandom
	if every {
		hook = func(int64) { c.check() }
	}
	p.secondary.after.Store(&hook)
	p.connect()
	return h, c
}
