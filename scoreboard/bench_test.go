package scoreboard

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/RoaringBitmap/roaring/v2"

	"github.com/ldmirror/ldmirror/bitmap"
)

// BenchmarkBeginEndHot is the cost the scoreboard adds to a write into a
// hot extent: one BeginWrite and one EndWrite, no I/O.
func BenchmarkBeginEndHot(b *testing.B) {
	s := openT(b, formatted(b, quiet), quiet)
	e := bitmap.Extent{First: 8, Last: 9}
	write(b, s, e, true)
	ctx := context.Background()
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := s.BeginWrite(ctx, e); err != nil {
				b.Fatal(err)
			}
			s.EndWrite(e, true)
		}
	})
	b.Run("parallel", func(b *testing.B) {
		for x := range uint32(64) {
			write(b, s, extentBlocks(x), true)
		}
		var n atomic.Uint32
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			e := extentBlocks(n.Add(1) % 64)
			for pb.Next() {
				if err := s.BeginWrite(ctx, e); err != nil {
					b.Fatal(err)
				}
				s.EndWrite(e, true)
			}
		})
	})
}

// BenchmarkMarkClear: marking and clearing a 2-block run in memory, with a
// full activity log (the mark checks every hot extent).
func BenchmarkMarkClear(b *testing.B) {
	s := openT(b, formatted(b, quiet), quiet)
	for x := range uint32(DefaultHotExtents) / 2 {
		write(b, s, extentBlocks(x), true)
	}
	run := roaring.BitmapOf(100, 101)
	b.ReportAllocs()
	for b.Loop() {
		s.MarkOutOfSync(run)
		s.ClearOutOfSync(run)
	}
}

// BenchmarkPersistTebibyte: one map write (encode, write, fdatasync) of a
// 1%-dirty 1 TiB volume to a metadata file in the test's temp dir.
func BenchmarkPersistTebibyte(b *testing.B) {
	for _, c := range []struct {
		name      string
		clustered bool
	}{{"random1pct", false}, {"clustered1pct", true}} {
		b.Run(c.name, func(b *testing.B) {
			s, err := Create(filepath.Join(b.TempDir(), "scoreboard"), tebibyte, Options{CleanInterval: -1})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			dirty := dirtyPercent(tebibyte, c.clustered, 7)
			s.MarkOutOfSync(dirty)
			dirty.RunOptimize()
			b.SetBytes(int64(dirty.GetSerializedSizeInBytes()))
			one := roaring.BitmapOf(dirty.Minimum())
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				s.ClearOutOfSync(one) // a change, so Sync writes
				s.MarkOutOfSync(one)
				if err := s.Sync(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkWritePath compares 4 KiB writes to a data file with and without
// the scoreboard around them, over a working set that fits the activity log
// (1 GiB: 256 extents of 4 MiB) and one that does not (64 GiB: every write
// likely needs a transaction). Writes go to the page cache, the cheapest
// local write there is, so the ratio is an upper bound on the overhead.
func BenchmarkWritePath(b *testing.B) {
	for _, c := range []struct {
		name    string
		working int64
	}{{"fits-1GiB", 1 << 30}, {"thrash-64GiB", 64 << 30}} {
		geom := Geometry{VolumeSize: c.working, BlockSize: 4096}
		for _, with := range []bool{false, true} {
			name := c.name + "/without"
			if with {
				name = c.name + "/with"
			}
			b.Run(name, func(b *testing.B) {
				dir := b.TempDir()
				data, err := os.Create(filepath.Join(dir, "data"))
				if err != nil {
					b.Fatal(err)
				}
				defer data.Close()
				if err := data.Truncate(c.working); err != nil {
					b.Fatal(err)
				}
				var s *Scoreboard
				if with {
					if s, err = Create(filepath.Join(dir, "scoreboard"), geom, Options{}); err != nil {
						b.Fatal(err)
					}
					defer s.Close()
				}
				blocks := uint64(c.working / 4096)
				ctx := context.Background()
				buf := make([]byte, 4096)
				// Warm up both sides alike: one write per extent, so the
				// "fits" case measures the steady state, not the first
				// touches that fill the activity log.
				for blk := uint64(0); c.working <= 1<<30 && blk < blocks; blk += 1024 {
					e := bitmap.Extent{First: uint32(blk), Last: uint32(blk)}
					if s != nil {
						if err := s.BeginWrite(ctx, e); err != nil {
							b.Fatal(err)
						}
					}
					if _, err := data.WriteAt(buf, int64(blk)*4096); err != nil {
						b.Fatal(err)
					}
					if s != nil {
						s.EndWrite(e, true)
					}
				}
				var seed atomic.Uint64
				b.SetBytes(4096)
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					rng := rand.New(rand.NewPCG(seed.Add(1), 3))
					buf := make([]byte, 4096)
					for pb.Next() {
						blk := uint32(rng.Uint64N(blocks))
						e := bitmap.Extent{First: blk, Last: blk}
						if s != nil {
							if err := s.BeginWrite(ctx, e); err != nil {
								b.Error(err)
								return
							}
						}
						_, err := data.WriteAt(buf, int64(blk)*4096)
						if s != nil {
							s.EndWrite(e, err == nil)
						}
						if err != nil {
							b.Error(err)
							return
						}
					}
				})
			})
		}
	}
}
