package scoreboard

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"

	"github.com/RoaringBitmap/roaring/v2"

	"github.com/ldmirror/ldmirror/bitmap"
)

// testGeom: 16384 blocks of 4 KiB in 256 extents of 64 blocks.
var testGeom = Geometry{VolumeSize: 64 << 20, BlockSize: 4096, ExtentSize: 256 << 10}

const blocksPerExtent = 64

// quiet turns the cleaner's timer off, so every map write in a test is one
// the test caused.
var quiet = Options{CleanInterval: -1}

func extentBlocks(x uint32) bitmap.Extent {
	return bitmap.Extent{First: x * blocksPerExtent, Last: x*blocksPerExtent + blocksPerExtent - 1}
}

func blocksOfExtents(xs ...uint32) *roaring.Bitmap {
	bm := roaring.New()
	for _, x := range xs {
		bm.AddRange(uint64(x)*blocksPerExtent, uint64(x+1)*blocksPerExtent)
	}
	return bm
}

func formatted(t testing.TB, opts Options) *crashStore {
	t.Helper()
	st := storeFor(t, testGeom, opts)
	if err := Format(st, "test", testGeom, opts); err != nil {
		t.Fatal(err)
	}
	return st
}

func openT(t testing.TB, st Store, opts Options) *Scoreboard {
	t.Helper()
	s, err := OpenStore(st, "test", testGeom, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func begin(t testing.TB, s *Scoreboard, e bitmap.Extent) {
	t.Helper()
	if err := s.BeginWrite(context.Background(), e); err != nil {
		t.Fatalf("BeginWrite(%v): %v", e, err)
	}
}

// write runs one whole write of e through the scoreboard.
func write(t testing.TB, s *Scoreboard, e bitmap.Extent, inSync bool) {
	t.Helper()
	begin(t, s, e)
	s.EndWrite(e, inSync)
}

// hotExtents returns the durably hot extents, ascending.
func hotExtents(s *Scoreboard) []uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var xs []uint32
	for x, es := range s.hot {
		if es.durable {
			xs = append(xs, x)
		}
	}
	slices.Sort(xs)
	return xs
}

func mustContain(t testing.TB, what string, got, want *roaring.Bitmap) {
	t.Helper()
	if missing := roaring.AndNot(want, got); !missing.IsEmpty() {
		t.Fatalf("%s: %d blocks forgotten, first %d (got %d blocks, want ⊇ %d)",
			what, missing.GetCardinality(), missing.Minimum(), got.GetCardinality(), want.GetCardinality())
	}
}

func TestRoundTripCleanAndCrash(t *testing.T) {
	st := formatted(t, quiet)
	s := openT(t, st, quiet)
	if !s.WasClean() || !s.Recovered().IsEmpty() {
		t.Fatalf("fresh scoreboard: clean=%v recovered=%d", s.WasClean(), s.Recovered().GetCardinality())
	}
	write(t, s, extentBlocks(1), true)
	failed := bitmap.Extent{First: 2*blocksPerExtent + 5, Last: 2*blocksPerExtent + 9}
	write(t, s, failed, false)
	marked := roaring.BitmapOf(9000, 9001, 16383)
	s.MarkOutOfSync(marked)
	want := roaring.Or(marked, roaring.BitmapOf(2*blocksPerExtent+5, 2*blocksPerExtent+6, 2*blocksPerExtent+7, 2*blocksPerExtent+8, 2*blocksPerExtent+9))
	if got := s.OutOfSync(); !got.Equals(want) {
		t.Fatalf("OutOfSync = %v, want %v", got, want)
	}
	if got := hotExtents(s); !slices.Equal(got, []uint32{1, 2}) {
		t.Fatalf("hot = %v, want [1 2]", got)
	}

	// A crash now: the map was never persisted, but both extents are hot.
	crashed := openT(t, st.crashAt(st.opCount(), keepNone), quiet)
	if crashed.WasClean() {
		t.Fatal("crash image reports a clean shutdown")
	}
	mustContain(t, "after crash", crashed.Recovered(), roaring.Or(blocksOfExtents(1, 2), roaring.BitmapOf(2*blocksPerExtent+5)))

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	again := openT(t, st, quiet)
	if !again.WasClean() {
		t.Fatal("after Close: not clean")
	}
	if got := again.Recovered(); !got.Equals(want) {
		t.Fatalf("after Close: recovered %d blocks, want exactly the %d out of sync", got.GetCardinality(), want.GetCardinality())
	}
	if got := hotExtents(again); len(got) != 0 {
		t.Fatalf("after Close: hot %v, want none", got)
	}
}

func (c *crashStore) layoutFor(t testing.TB) layout {
	t.Helper()
	p := make([]byte, pageSize)
	if _, err := c.ReadAt(p, 0); err != nil {
		t.Fatal(err)
	}
	sb, err := decodeSuperblock(p)
	if err != nil {
		t.Fatal(err)
	}
	return sb.layout
}

// gate blocks the first activity-log write until released, and says when it
// got there.
type gate struct {
	once    sync.Once
	arrived chan struct{}
	release chan struct{}
}

func newGate() *gate { return &gate{arrived: make(chan struct{}), release: make(chan struct{})} }

func (g *gate) hook(l layout) func(storeOp) error {
	return func(op storeOp) error {
		if !op.sync && op.off >= l.alOff && op.off < l.slotOffs[0] {
			first := false
			g.once.Do(func() { first = true })
			if first {
				close(g.arrived)
				<-g.release
			}
		}
		return nil
	}
}

// waitQueued waits until n requests are queued: a condition, not a delay.
func waitQueued(t *testing.T, s *Scoreboard, n int) {
	t.Helper()
	for {
		s.mu.Lock()
		q := len(s.queue)
		s.mu.Unlock()
		if q >= n {
			return
		}
		if t.Context().Err() != nil {
			t.Fatal("test ended while waiting for the queue")
		}
		runtime.Gosched()
	}
}

// TestGroupCommit: 16 concurrent BeginWrite calls into 16 new extents cost
// at most two activity-log transactions and two syncs: the first caller's
// transaction, then one shared by the 15 that queued behind it.
func TestGroupCommit(t *testing.T) {
	st := formatted(t, quiet)
	s := openT(t, st, quiet)
	g := newGate()
	st.hook = g.hook(st.layoutFor(t))
	syncs := st.syncCount()

	var wg sync.WaitGroup
	errs := make(chan error, 16)
	start := func(x uint32) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- s.BeginWrite(context.Background(), extentBlocks(x))
		}()
	}
	start(0)
	<-g.arrived
	for x := uint32(1); x < 16; x++ {
		start(x)
	}
	waitQueued(t, s, 15)
	close(g.release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := st.syncCount() - syncs; n > 2 {
		t.Fatalf("16 concurrent BeginWrite calls cost %d syncs, want <= 2", n)
	}
	if got := s.Stats().Transactions; got != 2 {
		t.Fatalf("transactions = %d, want 2", got)
	}
	if got := hotExtents(s); len(got) != 16 {
		t.Fatalf("hot = %v, want 16 extents", got)
	}
}

// TestHotPathNoIONoAlloc: a write into a hot extent costs no store op and
// no allocation.
func TestHotPathNoIONoAlloc(t *testing.T) {
	st := formatted(t, quiet)
	s := openT(t, st, quiet)
	e := bitmap.Extent{First: 70, Last: 71}
	write(t, s, e, true)
	ops := st.opCount()
	ctx := context.Background()
	allocs := testing.AllocsPerRun(1000, func() {
		if err := s.BeginWrite(ctx, e); err != nil {
			t.Fatal(err)
		}
		s.EndWrite(e, true)
	})
	if allocs != 0 {
		t.Fatalf("hot BeginWrite+EndWrite: %v allocs, want 0", allocs)
	}
	if n := st.opCount() - ops; n != 0 {
		t.Fatalf("hot BeginWrite+EndWrite: %d store ops, want 0", n)
	}
}

func TestEvictionLRU(t *testing.T) {
	opts := Options{CleanInterval: -1, HotExtents: 4}
	st := formatted(t, opts)
	s := openT(t, st, opts)
	for _, x := range []uint32{1, 2, 3, 4} {
		write(t, s, extentBlocks(x), true)
	}
	write(t, s, extentBlocks(1), true) // 1 is now the most recently used
	write(t, s, extentBlocks(5), true)
	if got := hotExtents(s); !slices.Equal(got, []uint32{1, 3, 4, 5}) {
		t.Fatalf("hot = %v, want [1 3 4 5] (2 was least recently used)", got)
	}
	if st := s.Stats(); st.Evictions != 1 || st.HotExtents != 4 {
		t.Fatalf("stats %+v, want 1 eviction and 4 hot", st)
	}
}

// TestEvictionWaitsForInFlight: with every hot extent busy, a write into a
// new extent waits for one to end, and then takes its place.
func TestEvictionWaitsForInFlight(t *testing.T) {
	opts := Options{CleanInterval: -1, HotExtents: 2}
	st := formatted(t, opts)
	s := openT(t, st, opts)
	begin(t, s, extentBlocks(1))
	begin(t, s, extentBlocks(2))
	done := make(chan error, 1)
	go func() { done <- s.BeginWrite(context.Background(), extentBlocks(3)) }()
	waitStalled(t, s)
	select {
	case err := <-done:
		t.Fatalf("BeginWrite into a full log returned %v before any write ended", err)
	default:
	}
	s.EndWrite(extentBlocks(2), true)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := hotExtents(s); !slices.Equal(got, []uint32{1, 3}) {
		t.Fatalf("hot = %v, want [1 3]", got)
	}
}

// waitStalled waits until the committer has found the log full.
func waitStalled(t *testing.T, s *Scoreboard) {
	t.Helper()
	for s.Stats().Stalls == 0 {
		if t.Context().Err() != nil {
			t.Fatal("test ended while waiting for a stall")
		}
		runtime.Gosched()
	}
}

// TestEvictionPersistsMapFirst: an extent holding out-of-sync marks that are
// not durable leaves the log only after the map holding them is: the
// committer has the cleaner persist first (CleanInterval is off here).
func TestEvictionPersistsMapFirst(t *testing.T) {
	opts := Options{CleanInterval: -1, HotExtents: 2}
	st := formatted(t, opts)
	s := openT(t, st, opts)
	failed := bitmap.Extent{First: blocksPerExtent + 3, Last: blocksPerExtent + 4}
	write(t, s, failed, false)
	write(t, s, extentBlocks(2), false)
	write(t, s, extentBlocks(3), true) // needs room: 1 or 2 must go
	if got := s.Stats().MapWrites; got != 1 {
		t.Fatalf("map writes = %d, want 1 before the eviction", got)
	}
	// Whatever the crash point from here, the failed blocks are known.
	for k := st.opCount() - 4; k <= st.opCount(); k++ {
		r := openT(t, st.crashAt(k, keepNone), opts)
		mustContain(t, fmt.Sprintf("crash at op %d", k), r.Recovered(), roaring.Or(roaring.BitmapOf(blocksPerExtent+3, blocksPerExtent+4), blocksOfExtents(2)))
	}
}

func TestWriteFailureIsSticky(t *testing.T) {
	st := formatted(t, quiet)
	s := openT(t, st, quiet)
	boom := errors.New("EIO")
	st.hook = func(storeOp) error { return boom }
	if err := s.BeginWrite(context.Background(), extentBlocks(1)); !errors.Is(err, ErrFailed) || !errors.Is(err, boom) {
		t.Fatalf("BeginWrite with a failing store: %v, want ErrFailed wrapping EIO", err)
	}
	st.hook = nil
	if err := s.BeginWrite(context.Background(), extentBlocks(2)); !errors.Is(err, ErrFailed) {
		t.Fatalf("BeginWrite after a failure: %v, want ErrFailed", err)
	}
	if err := s.Sync(context.Background()); !errors.Is(err, ErrFailed) {
		t.Fatalf("Sync after a failure: %v, want ErrFailed", err)
	}
	if err := s.Close(); !errors.Is(err, ErrFailed) {
		t.Fatalf("Close after a failure: %v, want ErrFailed", err)
	}
}

func TestBeginWriteCanceled(t *testing.T) {
	opts := Options{CleanInterval: -1, HotExtents: 2}
	st := formatted(t, opts)
	s := openT(t, st, opts)
	g := newGate()
	st.hook = g.hook(st.layoutFor(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.BeginWrite(ctx, extentBlocks(1)) }()
	<-g.arrived // granted, its transaction in flight
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled BeginWrite: %v, want context.Canceled", err)
	}
	close(g.release)
	// The abandoned extent holds no write: two new extents evict it.
	write(t, s, extentBlocks(2), true)
	write(t, s, extentBlocks(3), true)
	if got := hotExtents(s); !slices.Equal(got, []uint32{2, 3}) {
		t.Fatalf("hot = %v, want [2 3]", got)
	}
}

func TestCloseKeepsInFlight(t *testing.T) {
	st := formatted(t, quiet)
	s := openT(t, st, quiet)
	begin(t, s, extentBlocks(7))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.BeginWrite(context.Background(), extentBlocks(7)); !errors.Is(err, ErrClosed) {
		t.Fatalf("BeginWrite after Close: %v, want ErrClosed", err)
	}
	r := openT(t, st, quiet)
	if r.WasClean() {
		t.Fatal("Close with a write in flight reported clean")
	}
	mustContain(t, "recovered", r.Recovered(), blocksOfExtents(7))
}

// TestSecondCrashRemembers: what one recovery found survives a second crash
// right after Open, before anything was persisted.
func TestSecondCrashRemembers(t *testing.T) {
	st := formatted(t, quiet)
	s := openT(t, st, quiet)
	write(t, s, extentBlocks(4), true)
	img := st.crashAt(st.opCount(), keepNone)
	r := openT(t, img, quiet)
	if err := r.Sync(context.Background()); err != nil { // the recovery's own map write
		t.Fatal(err)
	}
	if img.opCount() == 0 {
		t.Fatal("recovery persisted nothing")
	}
	for k := 0; k <= img.opCount(); k++ { // every point of that I/O
		r2 := openT(t, img.crashAt(k, keepNone), quiet)
		mustContain(t, "second crash", r2.Recovered(), blocksOfExtents(4))
	}
	if !r.OutOfSync().Contains(4 * blocksPerExtent) {
		t.Fatal("recovered extent's blocks are not out of sync in memory")
	}
}

func TestBadCalls(t *testing.T) {
	s := openT(t, formatted(t, Options{CleanInterval: -1, HotExtents: 2}), Options{CleanInterval: -1, HotExtents: 2})
	ctx := context.Background()
	if err := s.BeginWrite(ctx, bitmap.Extent{First: 16383, Last: 16384}); !errors.Is(err, ErrRange) {
		t.Errorf("past the end: %v, want ErrRange", err)
	}
	if err := s.BeginWrite(ctx, bitmap.Extent{First: 5, Last: 4}); !errors.Is(err, ErrRange) {
		t.Errorf("reversed: %v, want ErrRange", err)
	}
	if err := s.BeginWrite(ctx, bitmap.Extent{First: 0, Last: 3 * blocksPerExtent}); !errors.Is(err, ErrSpan) {
		t.Errorf("4 extents into a log of 2: %v, want ErrSpan", err)
	}
	defer func() {
		if recover() == nil {
			t.Error("EndWrite without BeginWrite did not panic")
		}
	}()
	s.EndWrite(extentBlocks(9), true)
}
