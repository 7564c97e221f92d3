package blockdev

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ldmirror/ldmirror/transport"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// BlockChecksums reads n bytes at off from dev and returns the CRC32C of each
// block of blockSize bytes, 4 bytes a block, big-endian. CRC32C detects every
// error of up to 3 flipped bits in a 4 KiB block and misses a random
// corruption with a chance of 1 in 2^32.
func BlockChecksums(dev Device, off, n int64, blockSize int) ([]byte, error) {
	buf := make([]byte, n)
	if _, err := dev.ReadAt(buf, off); err != nil {
		return nil, fmt.Errorf("read %d bytes at %d: %w", n, off, err)
	}
	return checksumsOf(buf, blockSize), nil
}

// checksumsOf is the CRC32C of each block of blockSize bytes in buf.
func checksumsOf(buf []byte, blockSize int) []byte {
	sums := make([]byte, 0, 4*((len(buf)+blockSize-1)/blockSize))
	for i := 0; i < len(buf); i += blockSize {
		sums = binary.BigEndian.AppendUint32(sums, crc32.Checksum(buf[i:min(i+blockSize, len(buf))], castagnoli))
	}
	return sums
}

// VerifyProgress reports how far a Verify got.
type VerifyProgress func(doneBlocks, totalBlocks uint64)

// Verify compares every block with the peer by checksum, online: each run of
// blocks is locked against application writes while both sides checksum it.
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
	call, err := s.SubmitChecksum(off, n)
	if err != nil {
		return err
	}
	local, lerr := BlockChecksums(m.local, off, n, m.dirty.BlockSize())
	peer, err := call.WaitReply()
	if err != nil {
		m.peerLost(s, err)
		return err
	}
	if lerr != nil {
		return lerr
	}
	if len(peer) != len(local) {
		return fmt.Errorf("peer sent %d checksum bytes, want %d", len(peer), len(local))
	}
	for i := 0; i < len(local); i += 4 {
		if !bytes.Equal(local[i:i+4], peer[i:i+4]) {
			differ.Add(e.First + uint32(i/4))
		}
	}
	return nil
}
