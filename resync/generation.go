package resync

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
)

// Generations are one host's generation identifiers.
type Generations struct {
	Current uint64    `json:"current"`
	Bitmap  uint64    `json:"bitmap"`
	History [2]uint64 `json:"history"`
}

// String formats the identifiers the way status and logs show them.
func (g Generations) String() string {
	return fmt.Sprintf("%016X:%016X:%016X:%016X", g.Current, g.Bitmap, g.History[0], g.History[1])
}

// NewGenerations returns identifiers for data that shares no history.
func NewGenerations() Generations { return Generations{Current: newID()} }

// InitialGenerations are the identifiers of a newly created volume. They
// derive from the volume's UUID, so the two hosts' blank twins of a volume
// (all zeros on both) start in sync without a full copy.
func InitialGenerations(volume [16]byte) Generations {
	sum := sha256.Sum256(append([]byte("ldmirror initial generation "), volume[:]...))
	g := Generations{Current: binary.BigEndian.Uint64(sum[:8])}
	if g.Current == 0 {
		g.Current = 1
	}
	return g
}

// Pack is the wire form of the identifiers.
func (g Generations) Pack() [4]uint64 {
	return [4]uint64{g.Current, g.Bitmap, g.History[0], g.History[1]}
}

// Unpack reads the wire form.
func Unpack(w [4]uint64) Generations {
	return Generations{Current: w[0], Bitmap: w[1], History: [2]uint64{w[2], w[3]}}
}

// newID is a random non-zero identifier.
func newID() uint64 {
	var b [8]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			panic(err) // crypto/rand never fails on Linux
		}
		if id := binary.BigEndian.Uint64(b[:]); id != 0 {
			return id
		}
	}
}

// push moves id into the history, newest first.
func (g *Generations) push(id uint64) {
	if id == 0 || id == g.History[0] {
		return
	}
	g.History[1], g.History[0] = g.History[0], id
}

// StartTracking begins a new generation on a host that writes without its
// peer: Bitmap keeps the generation both shared (if it is not tracking
// already) and Current becomes new. It reports whether anything changed.
func (g *Generations) StartTracking() bool {
	if g.Bitmap != 0 {
		return false
	}
	g.Bitmap = g.Current
	g.Current = newID()
	return true
}

// SyncedFrom records on a target that it now holds the source's data: it
// takes the source's identifiers, history included (its own old data is
// gone), and tracks nothing.
func (g *Generations) SyncedFrom(source Generations) {
	*g = source
	g.Bitmap = 0
}

// Synced records on a source that its peer caught up: it tracks no
// changes any more.
func (g *Generations) Synced() {
	g.push(g.Bitmap)
	g.Bitmap = 0
}

// Discard gives up this host's data after a split brain: its Current
// becomes 0, which a peer reads as "copy everything to me".
func (g *Generations) Discard() {
	g.push(g.Current)
	g.Current, g.Bitmap = 0, 0
}

// Discarded reports whether Discard was called and no resync followed.
func (g Generations) Discarded() bool { return g.Current == 0 }

// Direction is the outcome of comparing two hosts' generations.
type Direction int

// Directions.
const (
	// InSync: both hold the same generation; only blocks either side marked
	// dirty (in flight at a crash, for example) need copying.
	InSync Direction = iota
	// LocalSource: the local host wrote since the hosts last agreed and its
	// bitmap covers what changed.
	LocalSource
	// PeerSource: the peer wrote since the hosts last agreed.
	PeerSource
	// LocalSourceFull: the local host is newer but the peer's data is older
	// than the local bitmap covers: every block must be copied.
	LocalSourceFull
	// PeerSourceFull is LocalSourceFull the other way round.
	PeerSourceFull
	// SplitBrain: both wrote since they last agreed.
	SplitBrain
	// Unrelated: no shared history; refuse (a different volume, or metadata
	// replaced by hand).
	Unrelated
)

func (d Direction) String() string {
	switch d {
	case InSync:
		return "in sync"
	case LocalSource:
		return "local is the resync source"
	case PeerSource:
		return "peer is the resync source"
	case LocalSourceFull:
		return "local is the source of a full resync"
	case PeerSourceFull:
		return "peer is the source of a full resync"
	case SplitBrain:
		return "split brain"
	case Unrelated:
		return "unrelated data"
	}
	return fmt.Sprintf("direction(%d)", int(d))
}

// Decide compares the local and the peer's generations.
func Decide(local, peer Generations) Direction {
	switch {
	case local.Discarded() && peer.Discarded():
		return Unrelated
	case peer.Discarded():
		return LocalSourceFull
	case local.Discarded():
		return PeerSourceFull
	case local.Current == peer.Current:
		return InSync
	case local.Bitmap != 0 && local.Bitmap == peer.Bitmap:
		return SplitBrain
	case local.Bitmap != 0 && local.Bitmap == peer.Current:
		return LocalSource
	case peer.Bitmap != 0 && peer.Bitmap == local.Current:
		return PeerSource
	case peer.Current != 0 && (peer.Current == local.History[0] || peer.Current == local.History[1]):
		return LocalSourceFull
	case local.Current != 0 && (local.Current == peer.History[0] || local.Current == peer.History[1]):
		return PeerSourceFull
	case local.Bitmap != 0 && (local.Bitmap == peer.History[0] || local.Bitmap == peer.History[1]),
		peer.Bitmap != 0 && (peer.Bitmap == local.History[0] || peer.Bitmap == local.History[1]):
		// One side tracked changes from a generation the other has since
		// left behind by writing too.
		return SplitBrain
	}
	return Unrelated
}
