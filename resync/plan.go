package resync

import (
	"errors"
	"fmt"

	"github.com/RoaringBitmap/roaring/v2"
)

// Errors of Admit: a peer a primary does not replicate to.
var (
	// ErrSplitBrain: both hosts wrote since they last agreed.
	ErrSplitBrain = errors.New("split brain: both hosts wrote since they last agreed")
	// ErrPeerNewer: the peer holds newer data; it must be the source.
	ErrPeerNewer = errors.New("the peer's data is newer")
	// ErrUnrelated: the hosts share no history.
	ErrUnrelated = errors.New("the peer's data is unrelated")
)

// Admit decides whether a primary with generations local may replicate to
// a peer with generations peer and bring it up to date. full: the peer is
// older than what the primary tracked, so every block is resynced.
func Admit(local, peer Generations) (full bool, err error) {
	switch d := Decide(local, peer); d {
	case InSync, LocalSource:
		return false, nil
	case LocalSourceFull:
		return true, nil
	case SplitBrain:
		return false, ErrSplitBrain
	case PeerSource, PeerSourceFull:
		return false, fmt.Errorf("%w (%v)", ErrPeerNewer, d)
	default:
		return false, ErrUnrelated
	}
}

// Behind is what a returning peer reports it wrote as primary and the
// current primary may lack: its out-of-sync blocks and, after a crash, its
// activity log's extents.
type Behind struct {
	Blocks   *roaring.Bitmap // nil or empty: none
	TooLarge bool            // the set did not fit in one reply: assume every block
}

// CatchUp is how a primary brings a peer it admitted up to date.
type CatchUp struct {
	// Full: resync every block (the set the peer reported was too large).
	Full bool
	// Extra blocks to resync: what the peer wrote as primary.
	Extra *roaring.Bitmap
	// Checksum: compare digests before sending, because most blocks are
	// likely equal: after this host crashed (its activity log's extents),
	// for blocks the peer wrote as primary, or when configured always.
	Checksum bool
}

// PlanCatchUp plans the catch-up of an admitted peer: behind is what it
// reported, crashed whether this host did not stop cleanly since its last
// completed resync, always the operator's --resync-checksum.
func PlanCatchUp(behind Behind, crashed, always bool) CatchUp {
	var c CatchUp
	switch {
	case behind.TooLarge:
		c.Full = true
	case behind.Blocks != nil && !behind.Blocks.IsEmpty():
		c.Extra = behind.Blocks
	}
	c.Checksum = crashed || always || c.Full || c.Extra != nil
	return c
}

// NeedsHandOff reports whether, once a resync brought the peer up to date,
// it must adopt this host's generation: this host tracked writes the peer
// lacked (local.Bitmap), the peer holds another generation, or it wrote as
// primary (hadBehind) even if the generations look equal.
func NeedsHandOff(local, peer Generations, hadBehind bool) bool {
	return local.Bitmap != 0 || local != peer || hadBehind
}
