package mirror

import (
	"context"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ldmirror/ldmirror/bitmap"
	"github.com/ldmirror/ldmirror/transport"
)

// replicator is how the application's writes reach the peer: in sync mode
// each write waits for the peer's ack (syncReplicator); in async mode it
// is journaled and the journal ships behind it (asyncMirror). The Mirror
// runs the steps common to both (write, Flush, Resync) and asks its
// replicator for the rest.
type replicator interface {
	// replicate ships o and applies it locally; e, its blocks, are locked,
	// announced to the write intent log and marked dirty.
	replicate(o op, e bitmap.Extent) error
	// flush makes every earlier acknowledged write durable as the mode
	// promises (docs/journal.md).
	flush() error
	// setPeer follows the Mirror's new session (nil: none).
	setPeer(s *transport.Session)
	// catchUp brings the peer of a new session up to date (Mirror.CatchUp).
	catchUp(ctx context.Context, checksum bool) error
	// drain waits until the peer holds every write made before the call.
	drain(ctx context.Context) error
	// beginResync prepares a bitmap resync; the returned func ends it.
	beginResync(ctx context.Context) (end func(error), err error)
	// cleared forgets blocks a resync copied.
	cleared(done *roaring.Bitmap)
	// markForeign records blocks going out of sync for a reason the
	// writes do not explain (Mirror.MarkOutOfSync).
	markForeign(blocks *roaring.Bitmap, why string) error
	// status fills the mode's part of st.
	status(st *Status)
	// close ends the replicator before the Mirror closes its device.
	close() error
}

// setPeer: a sync write goes to whatever session the Mirror has.
func (syncReplicator) setPeer(*transport.Session) {}

// catchUp resyncs the out-of-sync blocks: sync mode has no journal to
// replay.
func (r syncReplicator) catchUp(ctx context.Context, checksum bool) error {
	return r.m.Resync(ctx, checksum)
}

// drain: a sync write is on the peer when it returns.
func (syncReplicator) drain(context.Context) error { return nil }

// beginResync: nothing to prepare in sync mode.
func (syncReplicator) beginResync(context.Context) (func(error), error) {
	return func(error) {}, nil
}

func (syncReplicator) cleared(*roaring.Bitmap)                   {}
func (syncReplicator) markForeign(*roaring.Bitmap, string) error { return nil }
func (syncReplicator) status(st *Status)                         { st.Mode = ModeSync.String() }
func (syncReplicator) close() error                              { return nil }
