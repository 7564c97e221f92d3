package journal

import (
	"context"
	"testing"
)

// benchmarkAppend appends writes of size bytes, freeing the ring when it is
// half full (the truncation's superblock sync is part of the cost).
func benchmarkAppend(b *testing.B, size int) {
	j, _ := newJournal(b, DefaultCapacity)
	data := make([]byte, size)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	for b.Loop() {
		seq, err := j.TryAppend(Record{Kind: KindWrite, Offset: 4096, Data: data})
		if err != nil {
			b.Fatal(err)
		}
		if j.headPos-j.tailPos > DefaultCapacity/2 {
			if err := j.Truncate(seq); err != nil {
				b.Fatal(err)
			}
		}
	}
}

func BenchmarkAppend4K(b *testing.B)   { benchmarkAppend(b, 4096) }
func BenchmarkAppend64K(b *testing.B)  { benchmarkAppend(b, 64<<10) }
func BenchmarkAppend1M(b *testing.B)   { benchmarkAppend(b, 1<<20) }
func BenchmarkAppendTrim(b *testing.B) { benchmarkAppendTrim(b) }

func benchmarkAppendTrim(b *testing.B) {
	j, _ := newJournal(b, DefaultCapacity)
	b.ReportAllocs()
	for b.Loop() {
		seq, err := j.TryAppend(Record{Kind: KindTrim, Offset: 4096, Length: 4096})
		if err != nil {
			b.Fatal(err)
		}
		if j.headPos-j.tailPos > DefaultCapacity/2 {
			if err := j.Truncate(seq); err != nil {
				b.Fatal(err)
			}
		}
	}
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
			if err != nil {
				b.Error(err)
				return
			}
			j.mu.Lock()
			half := j.headPos-j.tailPos > DefaultCapacity/2
			j.mu.Unlock()
			if half {
				if err := j.Truncate(seq); err != nil {
					b.Error(err)
					return
				}
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
			if err == nil && j.Stats().Used > DefaultCapacity/2 {
				err = j.Truncate(seq)
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
