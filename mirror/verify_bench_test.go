package mirror

import (
	"context"
	"math/rand/v2"
	"testing"
)

func randomBytes(n int) []byte {
	r := rand.New(rand.NewPCG(13, 13))
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := r.Uint64()
		for j := i; j < min(i+8, n); j++ {
			b[j], v = byte(v), v>>8
		}
	}
	return b
}

// BenchmarkVerify compares a whole 1 GiB volume with a secondary on
// 127.0.0.1 in the same process, both files filled with the same random
// data and in the page cache: the cost of the block comparison and of the
// protocol, not of the disks. Both hosts share this machine's cores.
func BenchmarkVerify(b *testing.B) {
	p := newPairSized(b, resyncVolume)
	data := randomBytes(1 << 20)
	for off := int64(0); off < resyncVolume; off += int64(len(data)) {
		data[0]++ // no two runs alike
		if _, err := p.mirror.WriteAt(data, off); err != nil {
			b.Fatal(err)
		}
	}
	if err := p.mirror.Flush(); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(resyncVolume)
	for b.Loop() {
		differ, err := p.mirror.Verify(context.Background(), nil)
		if err != nil {
			b.Fatal(err)
		}
		if !differ.IsEmpty() {
			b.Fatalf("%d blocks differ", differ.GetCardinality())
		}
	}
}
