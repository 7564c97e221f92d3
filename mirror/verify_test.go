package mirror

import (
	"bytes"
	"context"
	"hash/crc32"
	"os"
	"path/filepath"
	"testing"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ldmirror/ldmirror/transport"
)

// ext4Versions returns two versions of one ext4 extent tree leaf block
// (metadata_csum), made by testdata/ext4meta/gen.sh: they differ in 10 bytes
// and, because the block ends with a seeded CRC32C of the bytes before it,
// have the same whole-block CRC32C.
func ext4Versions(t testing.TB) (a, b []byte) {
	t.Helper()
	var err error
	if a, err = os.ReadFile(filepath.Join("testdata", "ext4meta", "extent-a.bin")); err != nil {
		t.Fatal(err)
	}
	if b, err = os.ReadFile(filepath.Join("testdata", "ext4meta", "extent-b.bin")); err != nil {
		t.Fatal(err)
	}
	if len(a) != 4096 || len(b) != 4096 {
		t.Fatalf("ext4 blocks of %d and %d bytes, want 4096", len(a), len(b))
	}
	return a, b
}

// TestExt4MetadataChangeFoundAndRepaired is issue 13 in process: the
// primary holds one version of an ext4 extent block and the secondary
// another, at the same block. Verify must find exactly that block, and a
// checksum resync must send it; afterwards the backing files are equal.
func TestExt4MetadataChangeFoundAndRepaired(t *testing.T) {
	a, b := ext4Versions(t)
	const blk = 1292 // where gen.sh found it
	for _, tc := range []struct {
		name   string
		verify bool // find the block with Verify; else mark it out of sync
	}{
		{"verify then checksum resync", true},
		{"checksum resync of a marked block", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPair(t)
			if _, err := p.mirror.WriteAt(a, blk*4096); err != nil {
				t.Fatal(err)
			}
			if err := p.mirror.Flush(); err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(p.secPath, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt(b, blk*4096); err != nil {
				t.Fatal(err)
			}
			f.Close()
			if tc.verify {
				got, err := p.mirror.Verify(context.Background(), nil)
				if err != nil {
					t.Fatal(err)
				}
				if got.GetCardinality() != 1 || !got.Contains(blk) {
					t.Fatalf("verify found blocks %v, want exactly %d", got.ToArray(), blk)
				}
			} else {
				oos := roaring.New()
				oos.AddRange(blk-8, blk+8)
				p.dirty.MarkOutOfSync(oos)
			}
			if err := p.mirror.Resync(context.Background(), true); err != nil {
				t.Fatal(err)
			}
			if err := p.mirror.Flush(); err != nil {
				t.Fatal(err)
			}
			pri, err := os.ReadFile(p.priPath)
			if err != nil {
				t.Fatal(err)
			}
			sec, err := os.ReadFile(p.secPath)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(pri, sec) {
				t.Fatal("backing files differ after the checksum resync")
			}
			if st := p.mirror.Status(); st.Resync.Sent != 1 || st.DirtyBlocks != 0 {
				t.Fatalf("resync sent %d blocks, %d dirty after; want 1 sent, 0 dirty", st.Resync.Sent, st.DirtyBlocks)
			}
		})
	}
}

// TestDigestsTellExt4MetadataVersionsApart: the two versions of the ext4
// extent block differ and have the same whole-block CRC32C, which is what
// blocks were compared by before issue 13; their digests differ.
func TestDigestsTellExt4MetadataVersionsApart(t *testing.T) {
	a, b := ext4Versions(t)
	if bytes.Equal(a, b) {
		t.Fatal("the two versions are equal")
	}
	castagnoli := crc32.MakeTable(crc32.Castagnoli)
	if ca, cb := crc32.Checksum(a, castagnoli), crc32.Checksum(b, castagnoli); ca != cb {
		t.Fatalf("CRC32C %08x and %08x differ: the blocks do not show the defect", ca, cb)
	}
	for _, tc := range []struct {
		name string
		key  *[transport.ChecksumKeySize]byte
	}{
		{"zero key", new([transport.ChecksumKeySize]byte)},
		{"fixed key", &[transport.ChecksumKeySize]byte{0: 0x13, 31: 0xff}},
		{"random key", transport.NewChecksumKey()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			da, db := transport.BlockDigests(a, 4096, tc.key), transport.BlockDigests(b, 4096, tc.key)
			if len(da) != transport.ChecksumDigestSize || len(db) != transport.ChecksumDigestSize {
				t.Fatalf("digests of %d and %d bytes, want %d", len(da), len(db), transport.ChecksumDigestSize)
			}
			if bytes.Equal(da, db) {
				t.Fatalf("both versions have digest %x", da)
			}
		})
	}
}

func TestDigestsOf(t *testing.T) {
	block := randomBytes(4096)
	flipped := bytes.Clone(block)
	flipped[4000] ^= 0x04
	k1, k2 := &[transport.ChecksumKeySize]byte{1}, &[transport.ChecksumKeySize]byte{2}
	for _, tc := range []struct {
		name   string
		a, b   []byte
		ka, kb *[transport.ChecksumKeySize]byte
		equal  bool
	}{
		{"same block, same key", block, bytes.Clone(block), k1, k1, true},
		{"same block, other key", block, block, k1, k2, false},
		{"one bit flipped", block, flipped, k1, k1, false},
		{"zero blocks", make([]byte, 4096), make([]byte, 4096), k2, k2, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := bytes.Equal(transport.BlockDigests(tc.a, 4096, tc.ka), transport.BlockDigests(tc.b, 4096, tc.kb)); got != tc.equal {
				t.Fatalf("digests equal = %v, want %v", got, tc.equal)
			}
		})
	}
	// A run ending in a partial block has a digest for it too.
	run := append(bytes.Repeat(block, 3), block[:100]...)
	d := transport.BlockDigests(run, 4096, k1)
	if len(d) != 4*transport.ChecksumDigestSize {
		t.Fatalf("%d digest bytes for 3 blocks and a partial one, want %d", len(d), 4*transport.ChecksumDigestSize)
	}
	if !bytes.Equal(d[:transport.ChecksumDigestSize], d[transport.ChecksumDigestSize:2*transport.ChecksumDigestSize]) || bytes.Equal(d[:transport.ChecksumDigestSize], d[3*transport.ChecksumDigestSize:]) {
		t.Fatalf("digests %x: want the 3 full blocks alike and the partial one different", d)
	}
}
