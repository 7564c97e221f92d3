package resync

import (
	"context"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ldmirror/ldmirror/bitmap"
	"github.com/ldmirror/ldmirror/transport"
)

// Source is the primary's side of a resync or a verify: the mirror. Its
// blocks are copied to, or compared with, the peer of a transport session.
type Source interface {
	// Lock holds the blocks of e against application writes (a write that
	// overlaps waits) until the returned func is called, so that a copy or
	// a comparison never races a newer write. It fails once the source is
	// closing.
	Lock(e bitmap.Extent) (unlock func(), err error)
	// ReadAt reads the source's blocks.
	ReadAt(p []byte, off int64) (int, error)
	// Size is the volume's size in bytes.
	Size() int64
	// BlockSize is the size of a block of the out-of-sync set, in bytes.
	BlockSize() int
	// OutOfSync is a copy of the blocks the peer may lack.
	OutOfSync() *roaring.Bitmap
	// Copied forgets blocks the resync copied to the peer; it is called
	// while they are locked, so a write that fails later marks them again.
	Copied(blocks *roaring.Bitmap)
	// Differ records blocks a verify found different on the peer.
	Differ(blocks *roaring.Bitmap)
	// Persist makes the out-of-sync set's changes so far durable, so that
	// an interrupted resync resumes where it was.
	Persist(ctx context.Context) error
	// MarkTarget commits, before the first block is sent, that the peer
	// is inconsistent until the resync completes.
	MarkTarget(ctx context.Context) error
	// PeerLost stops shipping to s after it failed with err.
	PeerLost(s *transport.Session, err error)
	// AppWrites counts the application's writes so far: a resync yields to
	// them (Options.MinRate).
	AppWrites() uint64
}
