package blockdev

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"hash"
	"hash/crc32"
	"math/rand/v2"
	"testing"

	"golang.org/x/crypto/blake2b"
	"golang.org/x/crypto/blake2s"
)

// BenchmarkBlockHash measures the candidates for comparing blocks with the
// peer (issue 13) on what verify hashes: 1 MiB runs of 4 KiB blocks, one
// digest a block, each keyed with a 32-byte key where the hash takes one.
// docs/benchmarks.md has the figures and the choice.
func BenchmarkBlockHash(b *testing.B) {
	key := make([]byte, 32)
	for _, c := range []struct {
		name string
		new  func() hash.Hash
	}{
		{"crc32c", func() hash.Hash { return crc32.New(crc32.MakeTable(crc32.Castagnoli)) }},
		{"hmac-sha256", func() hash.Hash { return hmac.New(sha256.New, key) }},
		{"sha256-key-prefix", func() hash.Hash { return prefixed{sha256.New(), key} }},
		{"blake2b-keyed", func() hash.Hash { h, _ := blake2b.New(16, key); return h }},
		{"blake2s-keyed", func() hash.Hash { h, _ := blake2s.New128(key); return h }},
	} {
		b.Run(c.name, func(b *testing.B) {
			buf := randomBytes(1 << 20)
			h := c.new()
			out := make([]byte, 0, len(buf)/4096*h.Size())
			b.SetBytes(int64(len(buf)))
			b.ReportAllocs()
			for b.Loop() {
				out = out[:0]
				for i := 0; i < len(buf); i += 4096 {
					h.Reset()
					h.Write(buf[i : i+4096])
					out = h.Sum(out)
				}
			}
		})
	}
	b.Run("digestsOf", func(b *testing.B) { // the choice, as verify runs it
		buf := randomBytes(1 << 20)
		key := newChecksumKey()
		b.SetBytes(int64(len(buf)))
		b.ReportAllocs()
		for b.Loop() {
			digestsOf(buf, 4096, key)
		}
	})
}

// prefixed is SHA-256(key ‖ block): Reset writes the key again.
type prefixed struct {
	hash.Hash
	key []byte
}

func (p prefixed) Reset() { p.Hash.Reset(); p.Hash.Write(p.key) }

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
