package transport

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"hash"
	"hash/crc32"
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
			buf := make([]byte, 1<<20)
			rand.Read(buf)
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
	b.Run("BlockDigests", func(b *testing.B) { // the choice, as verify runs it
		buf := make([]byte, 1<<20)
		rand.Read(buf)
		key := NewChecksumKey()
		b.SetBytes(int64(len(buf)))
		b.ReportAllocs()
		for b.Loop() {
			BlockDigests(buf, 4096, key)
		}
	})
}

// prefixed is SHA-256(key ‖ block): Reset writes the key again.
type prefixed struct {
	hash.Hash
	key []byte
}

func (p prefixed) Reset() { p.Hash.Reset(); p.Hash.Write(p.key) }
