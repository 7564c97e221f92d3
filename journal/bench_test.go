package journal

import (
	"context"
	"testing"
)

// freeHalf truncates through seq once the ring is more than half full, so
// that appends never wait for room (the truncation's superblock sync is
// part of the cost).
func freeHalf(j *Journal, seq uint64) error {
	if j.Stats().Used > DefaultCapacity/2 {
		return j.Truncate(seq)
	}
	return nil
}

// benchmarkAppend appends rec over and over.
func benchmarkAppend(b *testing.B, rec Record) {
	j, _ := newJournal(b, DefaultCapacity)
	b.SetBytes(int64(len(rec.Data)))
	b.ReportAllocs()
	for b.Loop() {
		seq, err := j.TryAppend(rec)
		if err == nil {
			err = freeHalf(j, seq)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
}

// writeOf is a write record of size bytes.
func writeOf(size int) Record { return Record{Kind: KindWrite, Offset: 4096, Data: make([]byte, size)} }

func BenchmarkAppend4K(b *testing.B)  { benchmarkAppend(b, writeOf(4096)) }
func BenchmarkAppend64K(b *testing.B) { benchmarkAppend(b, writeOf(64<<10)) }
func BenchmarkAppend1M(b *testing.B)  { benchmarkAppend(b, writeOf(1<<20)) }
func BenchmarkAppendTrim(b *testing.B) {
	benchmarkAppend(b, Record{Kind: KindTrim, Offset: 4096, Length: 4096})
}

// BenchmarkAppend4KParallel: concurrent appenders write their records in
// parallel; only the reservation is serialized.
func BenchmarkAppend4KParallel(b *testing.B) {
	j, _ := newJournal(b, DefaultCapacity)
	b.SetBytes(4096)
	b.ReportAllocs()
	b.SetParallelism(4)
	b.RunParallel(func(pb *testing.PB) {
		data := make([]byte, 4096)
		for pb.Next() {
			seq, err := j.Append(context.Background(), Record{Kind: KindWrite, Data: data})
			if err == nil {
				err = freeHalf(j, seq)
			}
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkAppend4KSync: every append is followed by a Sync, from 16
// concurrent writers, as an application that fsyncs after each write: the
// syncs are group-committed.
func BenchmarkAppend4KSync(b *testing.B) {
	j, _ := newJournal(b, DefaultCapacity)
	b.SetBytes(4096)
	b.ReportAllocs()
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		data := make([]byte, 4096)
		for pb.Next() {
			seq, err := j.Append(context.Background(), Record{Kind: KindWrite, Data: data})
			if err == nil {
				err = j.Sync(context.Background())
			}
			if err == nil {
				err = freeHalf(j, seq)
			}
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
	j.mu.Lock()
	b.ReportMetric(float64(b.N)/float64(j.syncDone), "appends/fdatasync")
	j.mu.Unlock()
}

// benchmarkShip appends a record and has a cursor return it, as the async
// shipper does: from the buffer it was written from (the handoff), or read
// back from the ring and checked (the handoff off, as before issue 19).
func benchmarkShip(b *testing.B, size int) {
	for _, mode := range []string{"readback", "handoff"} {
		b.Run(mode, func(b *testing.B) {
			j, _ := newJournal(b, DefaultCapacity)
			if mode == "readback" {
				j.handoff.budget = 0
			}
			c, err := j.NewCursor(j.Next())
			if err != nil {
				b.Fatal(err)
			}
			rec := writeOf(size)
			var buf []byte
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				seq, err := j.TryAppend(rec)
				if err != nil {
					b.Fatal(err)
				}
				got, err := c.Next(context.Background(), buf)
				if err != nil {
					b.Fatal(err)
				}
				if got.Handed() {
					j.Recycle(got)
				} else {
					buf = got.Data[:0]
				}
				if err := freeHalf(j, seq); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkShip4K(b *testing.B) { benchmarkShip(b, 4096) }
func BenchmarkShip1M(b *testing.B) { benchmarkShip(b, 1<<20) }
