package mirror

import (
	"bytes"
	"context"
	"fmt"

	"github.com/ldmirror/ldmirror/blockdev"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ldmirror/ldmirror/transport"
)

// VerifyProgress reports how far a Verify got.
type VerifyProgress func(doneBlocks, totalBlocks uint64)

// Verify compares every block with the peer by keyed digest (see
// transport.BlockDigests), online: each run of blocks is locked against application
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
		return blockdev.ErrClosed
	}
	defer m.inflight.Done()
	e := m.dirty.ExtentOf(off, n)
	m.locks.lock(e)
	defer m.locks.unlock(e)
	key := transport.NewChecksumKey() // after the lock: see transport.BlockDigests
	call, err := s.SubmitChecksum(off, n, key)
	if err != nil {
		return err
	}
	buf := make([]byte, n)
	var local []byte
	_, lerr := m.local.ReadAt(buf, off)
	if lerr == nil {
		local = transport.BlockDigests(buf, m.dirty.BlockSize(), key)
	}
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
	for i := 0; i < len(local); i += transport.ChecksumDigestSize {
		if !bytes.Equal(local[i:i+transport.ChecksumDigestSize], peer[i:i+transport.ChecksumDigestSize]) {
			differ.Add(e.First + uint32(i/transport.ChecksumDigestSize))
		}
	}
	return nil
}
