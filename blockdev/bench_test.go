package blockdev

import (
	"sync/atomic"
	"testing"
)

// benchmarkMirrorWrite measures sync-mirrored writes of size bytes from
// depth concurrent writers to a secondary on 127.0.0.1, without FUSE.
func benchmarkMirrorWrite(b *testing.B, size, depth int) {
	p := newPair(&testing.T{})
	defer p.mirror.Close()
	b.SetBytes(int64(size))
	b.ReportAllocs()
	var next atomic.Int64
	slots := volSize / int64(size)
	b.SetParallelism(depth)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, size)
		for pb.Next() {
			off := (next.Add(1) % slots) * int64(size)
			if _, err := p.mirror.WriteAt(buf, off); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkMirrorWrite4KQD16(b *testing.B) { benchmarkMirrorWrite(b, 4096, 8) }
func BenchmarkMirrorWrite1MQD4(b *testing.B)  { benchmarkMirrorWrite(b, 1<<20, 2) }
