package resync

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ldmirror/ldmirror/bitmap"
	"github.com/ldmirror/ldmirror/transport"
)

// VerifyProgress reports how far a Verify got.
type VerifyProgress func(doneBlocks, totalBlocks uint64)

// verifyRun is the bytes a verify compares at once: the most one checksum
// request covers.
func verifyRun(blockSize int) int64 {
	return int64(transport.MaxChecksumBlocks/4) * int64(blockSize)
}

// Verify compares every block of src with the peer of s by keyed digest
// (transport.BlockDigests), online: each run is locked against application
// writes while both hosts hash it. Blocks that differ are recorded
// (src.Differ) for the next resync to repair; Verify returns them.
func Verify(ctx context.Context, src Source, s *transport.Session, progress VerifyProgress, log *slog.Logger) (*roaring.Bitmap, error) {
	if log == nil {
		log = slog.Default()
	}
	bs := src.BlockSize()
	size := src.Size()
	total := uint64((size + int64(bs) - 1) / int64(bs))
	run := verifyRun(bs)
	differ := roaring.New()
	for off := int64(0); off < size; off += run {
		if err := ctx.Err(); err != nil {
			return differ, err
		}
		n := min(run, size-off)
		if err := compare(src, s, off, n, differ); err != nil {
			return differ, fmt.Errorf("verify at offset %d: %w", off, err)
		}
		if progress != nil {
			progress(uint64((off+n)/int64(bs)), total)
		}
	}
	if !differ.IsEmpty() {
		src.Differ(differ)
		log.Warn("verify found blocks that differ on the peer; they are marked out of sync", "blocks", differ.GetCardinality())
	}
	return differ, nil
}

// compare hashes n bytes at off on both hosts and adds the blocks whose
// digests differ to differ.
func compare(src Source, s *transport.Session, off, n int64, differ *roaring.Bitmap) error {
	bs := src.BlockSize()
	e := bitmap.Extent{First: uint32(off / int64(bs)), Last: uint32((off + n - 1) / int64(bs))}
	unlock, err := src.Lock(e)
	if err != nil {
		return err
	}
	defer unlock()
	key := transport.NewChecksumKey() // after the lock: see transport.BlockDigests
	call, err := s.SubmitChecksum(off, n, key)
	if err != nil {
		return err
	}
	buf := make([]byte, n)
	var local []byte
	_, lerr := src.ReadAt(buf, off)
	if lerr == nil {
		local = transport.BlockDigests(buf, bs, key)
	}
	peer, err := call.WaitReply()
	if err != nil {
		src.PeerLost(s, err)
		return err
	}
	if lerr != nil {
		return lerr
	}
	if len(peer) != len(local) {
		return fmt.Errorf("peer sent %d digest bytes, want %d", len(peer), len(local))
	}
	for _, r := range differingRuns(e, local, peer) {
		differ.AddRange(uint64(r.First), uint64(r.Last)+1)
	}
	return nil
}
