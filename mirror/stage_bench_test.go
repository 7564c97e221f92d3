package mirror

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ldmirror/ldmirror/stage"
)

// BenchmarkResyncProtection is BenchmarkResync with the target's staging
// area (docs/design.md, "A resync target that stays usable") off and on:
// on, the resync's time includes the target's commit (the log made
// durable, the header written), after which the resync is complete; the
// target's background copy of the staged blocks into its volume that
// follows is reported apart, as apply-ms/op. An unprotected resync ends
// with the copied blocks in the target's page cache; off-flushed adds the
// flush that makes them durable, which the commit of a staged resync
// includes. Run by
// scripts/bench/resync-protection; results in docs/benchmarks.md.
func BenchmarkResyncProtection(b *testing.B) {
	// The daemon's log lines would share the lines of the results, which
	// the script reads.
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.DiscardHandler))
	for _, frac := range []float64{0.01, 0.1, 0.5} {
		for _, mode := range []string{"off", "off-flushed", "on"} {
			on := mode == "on"
			b.Run(fmt.Sprintf("dirty=%g%%/protection=%s", frac*100, mode), func(b *testing.B) {
				p, st := newStagedPair(b, resyncVolume, Config{}, func(t *stage.Target) { t.Off = !on })
				blocks := p.dirty.Blocks()
				rng := rand.New(rand.NewPCG(1, 2))
				oos := roaring.New()
				for oos.GetCardinality() < uint64(frac*float64(blocks)) {
					oos.Add(uint32(rng.Uint64N(blocks)))
				}
				b.SetBytes(int64(oos.GetCardinality()) * 4096)
				var apply time.Duration
				b.ResetTimer()
				for range b.N {
					b.StopTimer()
					p.dirty.MarkOutOfSync(oos)
					syscall.Sync() // no writeback of the last run in this one
					b.StartTimer()
					if err := p.mirror.Resync(context.Background(), false); err != nil {
						b.Fatal(err)
					}
					if mode == "off-flushed" {
						if err := p.mirror.Flush(); err != nil {
							b.Fatal(err)
						}
					}
					b.StopTimer()
					start := time.Now()
					if err := st.area.WaitApplied(context.Background()); err != nil {
						b.Fatal(err)
					}
					apply += time.Since(start)
					b.StartTimer()
				}
				b.StopTimer()
				b.ReportMetric(float64(apply.Milliseconds())/float64(b.N), "apply-ms/op")
				if in := st.area.Info(); in.State != stage.Idle {
					b.Fatalf("the target's staging area after the resync: %v; want idle (applied)", in.State)
				}
			})
		}
	}
}
