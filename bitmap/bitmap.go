package bitmap

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"sync"

	"github.com/RoaringBitmap/roaring/v2"
)

// DefaultBlockSize is the tracking granularity used when none is configured.
const DefaultBlockSize = 4096

// ErrBlockSize reports a block size that is not a power of two of at least 512 bytes.
var ErrBlockSize = errors.New("bitmap: block size must be a power of two >= 512")

// ErrTooLarge reports a volume with more blocks than a 32-bit roaring bitmap can index.
var ErrTooLarge = errors.New("bitmap: volume has more than 2^32 blocks; use a larger block size")

// Extent is the inclusive run of blocks [First, Last] touched by one write.
type Extent struct {
	First, Last uint32
}

// Blocks is the number of blocks in the extent.
func (e Extent) Blocks() uint64 { return uint64(e.Last) - uint64(e.First) + 1 }

// Set is the dirty-block set of one volume. It is safe for concurrent use.
type Set struct {
	shift  uint
	blocks uint64

	mu sync.Mutex
	// A block is dirty while it is in outOfSync or has writes in flight.
	// outOfSync holds blocks whose write failed to reach the peer; they stay
	// dirty whatever later acks say, until ClearOutOfSync (a resync) runs.
	outOfSync *roaring.Bitmap
	// inflight counts marked-but-unfinished writes per block. Only blocks with
	// a count > 0 have an entry, so a quiet volume holds none. Keeping
	// in-flight blocks out of the roaring bitmap keeps the write path free of
	// allocations: roaring drops a container when its last bit is cleared.
	inflight map[uint32]uint32
}

// New returns an empty set for a volume of size bytes tracked in blocks of
// blockSize bytes.
func New(size int64, blockSize int) (*Set, error) {
	if blockSize < 512 || blockSize&(blockSize-1) != 0 {
		return nil, fmt.Errorf("%w: got %d", ErrBlockSize, blockSize)
	}
	if size < 0 {
		return nil, fmt.Errorf("bitmap: negative volume size %d", size)
	}
	shift := uint(bits.TrailingZeros(uint(blockSize)))
	blocks := (uint64(size) + uint64(blockSize) - 1) >> shift
	if blocks > math.MaxUint32+1 {
		return nil, fmt.Errorf("%w: %d blocks of %d bytes", ErrTooLarge, blocks, blockSize)
	}
	return &Set{
		shift:     shift,
		blocks:    blocks,
		outOfSync: roaring.New(),
		inflight:  make(map[uint32]uint32),
	}, nil
}

// BlockSize is the tracking granularity in bytes.
func (s *Set) BlockSize() int { return 1 << s.shift }

// Blocks is the number of blocks in the volume.
func (s *Set) Blocks() uint64 { return s.blocks }

// ExtentOf returns the blocks touched by n bytes at byte offset off. n must
// be positive and the range inside the volume.
func (s *Set) ExtentOf(off, n int64) Extent {
	return Extent{First: uint32(off >> s.shift), Last: uint32((off + n - 1) >> s.shift)}
}

// Mark records a write about to be issued: its blocks become dirty and their
// in-flight counts go up. Every Mark must be followed by exactly one Ack or
// Fail with the same extent.
func (s *Set) Mark(e Extent) {
	s.mu.Lock()
	for b := e.First; ; b++ {
		s.inflight[b]++
		if b == e.Last {
			break
		}
	}
	s.mu.Unlock()
}

// Ack records that the peer acknowledged a marked write. A block becomes
// clean when no write touching it is in flight and it is not out of sync.
func (s *Set) Ack(e Extent) { s.finish(e, false) }

// Fail records that a marked write did not reach the peer: its blocks stay
// dirty until ClearOutOfSync.
func (s *Set) Fail(e Extent) { s.finish(e, true) }

func (s *Set) finish(e Extent, failed bool) {
	s.mu.Lock()
	if failed {
		s.outOfSync.AddRange(uint64(e.First), uint64(e.Last)+1)
	}
	for b := e.First; ; b++ {
		switch n := s.inflight[b]; n {
		case 0:
			s.mu.Unlock()
			panic(fmt.Sprintf("bitmap: finish of block %d that has no write in flight", b))
		case 1:
			delete(s.inflight, b)
		default:
			s.inflight[b] = n - 1
		}
		if b == e.Last {
			break
		}
	}
	s.mu.Unlock()
}

// Dirty is the number of dirty blocks.
func (s *Set) Dirty() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.outOfSync.GetCardinality()
	for b := range s.inflight {
		if !s.outOfSync.Contains(b) {
			n++
		}
	}
	return n
}

// InFlight is the number of blocks with at least one write in flight.
func (s *Set) InFlight() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.inflight)
}

// IsDirty reports whether block b is dirty.
func (s *Set) IsDirty(b uint32) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inflight[b] > 0 || s.outOfSync.Contains(b)
}

// OutOfSync returns a copy of the blocks whose writes failed to reach the peer.
func (s *Set) OutOfSync() *roaring.Bitmap {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.outOfSync.Clone()
}

// MarkAllOutOfSync marks every block of the volume out of sync, for a full
// resync.
func (s *Set) MarkAllOutOfSync() {
	all := roaring.New()
	all.AddRange(0, s.blocks)
	s.MarkOutOfSync(all)
}

// MarkOutOfSync marks blocks out of sync, e.g. those a scoreboard recovered
// after a crash. Blocks past the end of the volume are ignored.
func (s *Set) MarkOutOfSync(blocks *roaring.Bitmap) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.outOfSync.Or(blocks)
	if !s.outOfSync.IsEmpty() && uint64(s.outOfSync.Maximum()) >= s.blocks {
		s.outOfSync.RemoveRange(s.blocks, 1<<32)
	}
}

// ClearOutOfSync forgets that the blocks in done are out of sync, after a
// resync copied them. Blocks with writes still in flight stay dirty.
func (s *Set) ClearOutOfSync(done *roaring.Bitmap) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.outOfSync.AndNot(done)
}

// SizeInBytes estimates the memory held by the out-of-sync bitmap.
func (s *Set) SizeInBytes() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.outOfSync.GetSizeInBytes()
}
