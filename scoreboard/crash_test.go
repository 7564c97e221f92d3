package scoreboard

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/RoaringBitmap/roaring/v2"

	"github.com/ldmirror/ldmirror/bitmap"
)

// crashModel is what the caller of a Scoreboard knows may differ from the
// peer: blocks of writes that BeginWrite admitted and EndWrite has not
// ended, plus blocks known out of sync (failed writes, and marks once Sync
// returned) that ClearOutOfSync has not removed. Invariant 3 says a crash at
// any instant must recover a superset of it.
type crashModel struct {
	mu       sync.Mutex
	version  int
	snaps    []*roaring.Bitmap // the may-differ set at each version
	inflight map[int]bitmap.Extent
	nextID   int
	oos      *roaring.Bitmap
}

func newCrashModel() *crashModel {
	m := &crashModel{inflight: map[int]bitmap.Extent{}, oos: roaring.New()}
	m.bumpLocked()
	return m
}

func (m *crashModel) mayDifferLocked() *roaring.Bitmap {
	bm := m.oos.Clone()
	for _, e := range m.inflight {
		bm.AddRange(uint64(e.First), uint64(e.Last)+1)
	}
	return bm
}

// bumpLocked records a new state. Calls that shrink the set run with m.mu
// held, so no store op can be labelled with the old, larger state after the
// scoreboard already acted on the new one; calls that grow it bump after
// they return (until then the write was not issued).
func (m *crashModel) bumpLocked() {
	m.version = len(m.snaps)
	m.snaps = append(m.snaps, m.mayDifferLocked())
}

func (m *crashModel) current() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.version
}

// hotNeeded is the number of distinct extents that writes in flight hold,
// with e added.
func (m *crashModel) hotNeeded(e bitmap.Extent) int {
	xs := map[uint32]bool{}
	for _, w := range append([]bitmap.Extent{e}, slices.Collect(maps.Values(m.inflight))...) {
		for x := w.First / blocksPerExtent; x <= w.Last/blocksPerExtent; x++ {
			xs[x] = true
		}
	}
	return len(xs)
}

// segment is the history of one store: the run starts on a fresh store,
// and a simulated crash continues on the crash image.
type segment struct {
	st       *crashStore
	startVer int
	startOps int // crashes before this are inside Format, which promises nothing
	endOps   int // ops past this belong to a scoreboard that "crashed"
	endVer   int
}

// TestCrashAtEveryPoint drives a scoreboard with random writes (some
// failing), clears, marks, syncs, clean reopens and crash-and-continue, with
// a tiny activity log so extents are evicted all the time. Then, for every
// store op of the run and several ways to lose or tear the unsynced writes
// at that point, it opens the crash image and checks that Recovered holds
// everything the model says may differ at that instant.
func TestCrashAtEveryPoint(t *testing.T) {
	seeds, steps := []uint64{1, 2, 3, 4, 5, 6, 7, 8}, 2000
	if testing.Short() {
		seeds, steps = []uint64{1, 2, 3}, 600
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			points := crashRun(t, seed, steps)
			t.Logf("seed %d: %d crash images checked", seed, points)
		})
	}
}

func crashRun(t *testing.T, seed uint64, steps int) int {
	opts := Options{CleanInterval: -1, HotExtents: 4, ALSlots: 3}
	const extents = 12 // writes go to the first 12 extents: many evictions
	rng := rand.New(rand.NewPCG(seed, 0x5c0e))
	ctx := context.Background()
	m := newCrashModel()

	st := storeFor(t, testGeom, opts)
	if err := Format(st, "crash", testGeom, opts); err != nil {
		t.Fatal(err)
	}
	st.setVersion(m.current)
	segs := []*segment{{st: st, startOps: st.opCount()}}
	s, err := OpenStore(st, "crash", testGeom, opts)
	if err != nil {
		t.Fatal(err)
	}

	for range steps {
		switch op := rng.IntN(20); {
		case op < 8: // begin a write; at most 2 extents, never more hot than fit
			first := uint32(rng.IntN(extents*blocksPerExtent - 1))
			e := bitmap.Extent{First: first, Last: min(first+uint32(rng.IntN(80)), extents*blocksPerExtent-1)}
			m.mu.Lock()
			fits := m.hotNeeded(e) <= opts.HotExtents
			m.mu.Unlock()
			if !fits {
				continue
			}
			if err := s.BeginWrite(ctx, e); err != nil {
				t.Fatalf("BeginWrite(%v): %v", e, err)
			}
			m.mu.Lock()
			m.inflight[m.nextID] = e
			m.nextID++
			m.bumpLocked()
			m.mu.Unlock()
		case op < 14: // end a write; a third of them fail to reach the peer
			m.mu.Lock()
			if ids := slices.Sorted(maps.Keys(m.inflight)); len(ids) > 0 {
				id := ids[rng.IntN(len(ids))]
				e, inSync := m.inflight[id], rng.IntN(3) != 0
				s.EndWrite(e, inSync)
				delete(m.inflight, id)
				if !inSync {
					m.oos.AddRange(uint64(e.First), uint64(e.Last)+1)
				}
				m.bumpLocked()
			}
			m.mu.Unlock()
		case op < 16: // a resync copied some out-of-sync blocks
			m.mu.Lock()
			done := roaring.New()
			it := m.oos.Iterator()
			for it.HasNext() {
				if b := it.Next(); rng.IntN(2) == 0 {
					done.Add(b)
				}
			}
			s.ClearOutOfSync(done)
			m.oos.AndNot(done)
			m.bumpLocked()
			m.mu.Unlock()
		case op < 17: // marks anywhere (e.g. the peer's dirty set), then Sync
			marks := roaring.New()
			for range 1 + rng.IntN(5) {
				marks.Add(uint32(rng.IntN(int(testGeom.blocks()))))
			}
			s.MarkOutOfSync(marks)
			if err := s.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			m.mu.Lock()
			m.oos.Or(marks)
			m.bumpLocked()
			m.mu.Unlock()
		case op < 18:
			if err := s.Sync(ctx); err != nil {
				t.Fatal(err)
			}
		case op < 19: // clean restart when idle: exactly the map comes back
			m.mu.Lock()
			idle := len(m.inflight) == 0
			m.mu.Unlock()
			if !idle {
				continue
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if s, err = OpenStore(st, "crash", testGeom, opts); err != nil {
				t.Fatal(err)
			}
			m.mu.Lock()
			got, want := s.Recovered(), m.oos
			m.mu.Unlock()
			if !s.WasClean() || !got.Equals(want) {
				t.Fatalf("clean restart: clean=%v, recovered %d blocks, want exactly the %d out of sync",
					s.WasClean(), got.GetCardinality(), want.GetCardinality())
			}
		default: // crash, and go on from what the crash left
			seg := segs[len(segs)-1]
			seg.endOps, seg.endVer = st.opCount(), m.current()
			img := st.crashAt(seg.endOps, keepRandom(rng))
			st.setVersion(nil)
			s.Close() // the crashed instance: its later I/O is past endOps
			// The recovery's own I/O (the cleaner persists what it found)
			// happens while the pre-crash state is what may differ.
			img.setVersion(m.current)
			segs = append(segs, &segment{st: img, startVer: seg.endVer})
			s, err = OpenStore(img, "crash", testGeom, opts)
			if err != nil {
				t.Fatalf("open after crash: %v", err)
			}
			m.mu.Lock()
			mustContain(t, "crash and continue", s.Recovered(), m.mayDifferLocked())
			// The caller now treats the recovered blocks as out of sync, and
			// the writes that were in flight are gone.
			m.oos = s.OutOfSync()
			clear(m.inflight)
			m.bumpLocked()
			m.mu.Unlock()
			st = img
		}
	}
	s.Close()
	last := segs[len(segs)-1]
	last.endOps, last.endVer = last.st.opCount(), m.current()

	points := 0
	for si, seg := range segs {
		seg.st.mu.Lock()
		ops := seg.st.ops[:seg.endOps]
		seg.st.mu.Unlock()
		seg.st.eachCrashPoint(func(k int, durable []byte, unsynced []storeOp) {
			if k < seg.startOps || k > seg.endOps {
				return
			}
			lo, hi := seg.startVer, seg.endVer
			if k > seg.startOps {
				lo = ops[k-1].version
			}
			if k < len(ops) {
				hi = ops[k].version
			}
			need := roaring.New()
			for v := lo; v <= hi; v++ {
				need.Or(m.snaps[v])
			}
			for _, keep := range crashVariants(unsynced, rng) {
				img := newCrashStore(int64(len(durable)))
				copy(img.data, durable)
				for i, w := range unsynced {
					if p := keep(i, w); p != nil {
						copy(img.data[w.off:], p)
					}
				}
				r, err := OpenStore(img, "crash", testGeom, opts)
				if err != nil {
					t.Fatalf("segment %d, crash after op %d: %v", si, k, err)
				}
				mustContain(t, fmt.Sprintf("segment %d, crash after op %d (versions %d..%d)", si, k, lo, hi), r.Recovered(), need)
				r.Close()
				points++
			}
		})
	}
	return points
}

// crashVariants are the ways a crash treats the unsynced writes: all lost,
// all kept, the last torn near its start, middle and end (the others kept),
// and a random subset (disks reorder).
func crashVariants(unsynced []storeOp, rng *rand.Rand) []func(int, storeOp) []byte {
	vs := []func(int, storeOp) []byte{keepNone}
	if len(unsynced) == 0 {
		return vs
	}
	n := len(unsynced)
	vs = append(vs, func(_ int, w storeOp) []byte { return w.data })
	for _, frac := range []func(int) int{
		func(int) int { return 1 },
		func(l int) int { return l / 2 },
		func(l int) int { return l - 1 },
	} {
		vs = append(vs, func(i int, w storeOp) []byte {
			if i == n-1 {
				return w.data[:frac(len(w.data))]
			}
			return w.data
		})
	}
	return append(vs, keepRandom(rng))
}

// keepRandom keeps each unsynced write whole, torn at a random byte, or not
// at all.
func keepRandom(rng *rand.Rand) func(int, storeOp) []byte {
	return func(_ int, w storeOp) []byte {
		switch rng.IntN(3) {
		case 0:
			return nil
		case 1:
			return w.data[:rng.IntN(len(w.data))]
		}
		return w.data
	}
}
