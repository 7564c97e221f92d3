package blockdev

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"fmt"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ldmirror/ldmirror/transport"
)

// digestSize is the bytes of one block's digest in a checksum reply.
const digestSize = transport.ChecksumDigestSize

// BlockDigests reads n bytes at off from dev and returns the digest of each
// block of blockSize bytes keyed with key, digestSize bytes a block (see
// digestsOf): the secondary's answer to a checksum request.
func BlockDigests(dev Device, off, n int64, blockSize int, key *[transport.ChecksumKeySize]byte) ([]byte, error) {
	buf := make([]byte, n)
	if _, err := dev.ReadAt(buf, off); err != nil {
		return nil, fmt.Errorf("read %d bytes at %d: %w", n, off, err)
	}
	return digestsOf(buf, blockSize, key), nil
}

// digestsOf returns the digest of each block of blockSize bytes in buf: the
// first digestSize bytes of HMAC-SHA256 keyed with key.
//
// Not CRC32C: a CRC is affine, and ext4 (metadata_csum) ends extent and
// other metadata blocks with a seeded CRC32C of the bytes before it, so
// every version of such a block has the same whole-block CRC32C (issue 13,
// docs/design.md). SHA-256 has no such structure and runs on the CPU's SHA
// extensions where present; docs/benchmarks.md has the measured choice.
//
// 16 bytes are plenty: the key is new for each request and drawn after the
// primary locked the run, so no one can search for a colliding block
// beforehand, and a block that differs matches by chance with probability
// 2^-128.
func digestsOf(buf []byte, blockSize int, key *[transport.ChecksumKeySize]byte) []byte {
	mac := hmac.New(sha256.New, key[:])
	sums := make([]byte, 0, digestSize*((len(buf)+blockSize-1)/blockSize))
	var sum [sha256.Size]byte
	for i := 0; i < len(buf); i += blockSize {
		mac.Reset()
		mac.Write(buf[i:min(i+blockSize, len(buf))])
		sums = append(sums, mac.Sum(sum[:0])[:digestSize]...)
	}
	return sums
}

// newChecksumKey draws the key of one checksum request.
func newChecksumKey() *[transport.ChecksumKeySize]byte {
	key := new([transport.ChecksumKeySize]byte)
	rand.Read(key[:]) // never returns an error: it crashes the program instead
	return key
}

// VerifyProgress reports how far a Verify got.
type VerifyProgress func(doneBlocks, totalBlocks uint64)

// Verify compares every block with the peer by keyed digest (see
// digestsOf), online: each run of blocks is locked against application
// writes while both sides hash it.
// Blocks that differ are marked out of sync (and durably so in the write
// intent log) for the next Resync to repair; Verify returns them.
func (m *Mirror) Verify(ctx context.Context, progress VerifyProgress) (*roaring.Bitmap, error) {
	s := m.session()
	if s == nil {
		return nil, fmt.Errorf("verify: %w", transport.ErrDisconnected)
	}
	bs := int64(m.dirty.BlockSize())
	size := m.local.Size()
	total := m.dirty.Blocks()
	run := int64(transport.MaxChecksumBlocks/4) * bs // 1 MiB of 4 KiB blocks
	differ := roaring.New()
	for off := int64(0); off < size; off += run {
		if err := ctx.Err(); err != nil {
			return differ, err
		}
		n := min(run, size-off)
		if err := m.verifyRun(s, off, n, differ); err != nil {
			return differ, fmt.Errorf("verify at offset %d: %w", off, err)
		}
		if progress != nil {
			progress(uint64((off+n)/bs), total)
		}
	}
	if !differ.IsEmpty() {
		m.dirty.MarkOutOfSync(differ)
		if m.intent != nil {
			m.intent.MarkOutOfSync(differ)
		}
		m.log.Warn("verify found blocks that differ on the peer; they are marked out of sync", "blocks", differ.GetCardinality())
	}
	return differ, nil
}

func (m *Mirror) verifyRun(s *transport.Session, off, n int64, differ *roaring.Bitmap) error {
	if !m.begin() {
		return ErrClosed
	}
	defer m.inflight.Done()
	e := m.dirty.ExtentOf(off, n)
	m.locks.lock(e)
	defer m.locks.unlock(e)
	key := newChecksumKey() // after the lock: see digestsOf
	call, err := s.SubmitChecksum(off, n, key)
	if err != nil {
		return err
	}
	local, lerr := BlockDigests(m.local, off, n, m.dirty.BlockSize(), key)
	peer, err := call.WaitReply()
	if err != nil {
		m.peerLost(s, err)
		return err
	}
	if lerr != nil {
		return lerr
	}
	if len(peer) != len(local) {
		return fmt.Errorf("peer sent %d digest bytes, want %d", len(peer), len(local))
	}
	for i := 0; i < len(local); i += digestSize {
		if !bytes.Equal(local[i:i+digestSize], peer[i:i+digestSize]) {
			differ.Add(e.First + uint32(i/digestSize))
		}
	}
	return nil
}
