package scoreboard

import (
	"context"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/RoaringBitmap/roaring/v2"

	"github.com/ldmirror/ldmirror/bitmap"
)

// tebibyte is the volume of the memory target: 2^28 blocks of 4 KiB in
// 2^18 extents of 4 MiB.
var tebibyte = Geometry{VolumeSize: 1 << 40, BlockSize: 4096, ExtentSize: 4 << 20}

func heapInUse() uint64 {
	runtime.GC() // twice: the first runs finalizers whose objects the second frees
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// heapSince is the live heap grown since before, or 0 if it shrank (the
// test's own garbage from earlier was collected).
func heapSince(before uint64) uint64 {
	if now := heapInUse(); now > before {
		return now - before
	}
	return 0
}

// TestMemoryCleanTebibyte: a clean 1 TiB volume with a full activity log
// (512 hot extents) holds well under 1 MiB, measured on the heap and by the
// Stats estimate. The metadata file is sparse.
func TestMemoryCleanTebibyte(t *testing.T) {
	path := filepath.Join(t.TempDir(), "scoreboard")
	// The runtime keeps the descriptors of finished goroutines for reuse, on
	// the heap: have 512 exist once before measuring, so the fill below
	// reuses them instead of counting them as ours.
	var warm sync.WaitGroup
	hold := make(chan struct{})
	for range DefaultHotExtents {
		warm.Go(func() { <-hold })
	}
	close(hold)
	warm.Wait()
	before := heapInUse()
	s, err := Create(path, tebibyte, Options{CleanInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	clean := heapSince(before)
	if clean > 1<<20 {
		t.Fatalf("clean 1 TiB volume, empty log: %d bytes of heap, want <= 1 MiB", clean)
	}
	// Fill the log: 512 writers at once, which group commit serves with a
	// handful of transactions.
	var wg sync.WaitGroup
	for x := range uint32(DefaultHotExtents) {
		wg.Go(func() {
			e := bitmap.Extent{First: x * 1024 * 7, Last: x*1024*7 + 1}
			if err := s.BeginWrite(context.Background(), e); err != nil {
				t.Error(err)
				return
			}
			s.EndWrite(e, true)
		})
	}
	wg.Wait()
	st := s.Stats()
	heap := heapSince(before)
	t.Logf("clean 1 TiB: heap %d bytes with an empty log; with %d hot extents heap %d bytes, estimate %d bytes; %d transactions for %d writers",
		clean, st.HotExtents, heap, st.MemoryBytes, st.Transactions, DefaultHotExtents)
	if st.HotExtents != DefaultHotExtents {
		t.Fatalf("hot extents = %d, want %d", st.HotExtents, DefaultHotExtents)
	}
	if heap > 1<<20 || st.MemoryBytes > 1<<20 {
		t.Fatalf("clean 1 TiB volume holds %d bytes of heap (estimate %d), want <= 1 MiB", heap, st.MemoryBytes)
	}
}

// dirtyPercent returns 1% of the blocks of g, either scattered at random or
// in 1 MiB runs (a file system writing a few large files while disconnected).
func dirtyPercent(g Geometry, clustered bool, seed uint64) *roaring.Bitmap {
	rng := rand.New(rand.NewPCG(seed, 1))
	n := g.blocks()
	bm := roaring.New()
	if clustered {
		const run = 256
		for bm.GetCardinality() < n/100 {
			first := rng.Uint64N(n/run) * run
			bm.AddRange(first, first+run)
		}
		return bm
	}
	vals := make([]uint32, 0, n/100)
	for range n / 100 {
		vals = append(vals, uint32(rng.Uint64N(n)))
	}
	bm.AddMany(vals)
	return bm
}

// TestMemoryDirtyTebibyte reports (and bounds) the memory and map write of
// a 1%-dirty 1 TiB volume.
func TestMemoryDirtyTebibyte(t *testing.T) {
	if testing.Short() {
		t.Skip("builds 1 percent dirty maps of 2^28 blocks")
	}
	for _, c := range []struct {
		name      string
		clustered bool
		maxBytes  uint64
	}{
		{"random", false, 8 << 20},   // array containers: 2 bytes a block
		{"clustered", true, 1 << 20}, // runs: a few bytes a run
	} {
		t.Run(c.name, func(t *testing.T) {
			dirty := dirtyPercent(tebibyte, c.clustered, 7)
			dirty.RunOptimize()
			s, err := Create(filepath.Join(t.TempDir(), "scoreboard"), tebibyte, Options{CleanInterval: -1})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			before := heapInUse()
			s.MarkOutOfSync(dirty)
			heap := heapSince(before)
			start := time.Now()
			if err := s.Sync(context.Background()); err != nil {
				t.Fatal(err)
			}
			took := time.Since(start)
			st := s.Stats()
			t.Logf("1%% %s: %d blocks out of sync, map heap %d bytes (estimate %d), serialized %d bytes, persist+fdatasync %v",
				c.name, st.OutOfSyncBlocks, heap, st.MemoryBytes, dirty.GetSerializedSizeInBytes(), took.Round(time.Millisecond))
			if st.OutOfSyncBlocks != dirty.GetCardinality() || st.MapWrites != 1 {
				t.Fatalf("stats %+v: want %d blocks out of sync and one map write", st, dirty.GetCardinality())
			}
			if st.MemoryBytes > c.maxBytes {
				t.Fatalf("1%% %s dirty map holds %d bytes, want <= %d", c.name, st.MemoryBytes, c.maxBytes)
			}
		})
	}
}
