package mirror

import "fmt"

// Mode is how the primary replicates writes.
type Mode uint8

// Replication modes.
const (
	// ModeSync acknowledges a write once the peer applied it.
	ModeSync Mode = iota
	// ModeAsync acknowledges a write once it is written locally and
	// appended to the journal, which ships in order behind it.
	ModeAsync
)

// String is the name ParseMode reads back.
func (m Mode) String() string {
	if m == ModeAsync {
		return "async"
	}
	return "sync"
}

// ParseMode parses "sync" or "async".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "sync":
		return ModeSync, nil
	case "async":
		return ModeAsync, nil
	}
	return 0, fmt.Errorf("replication mode %q: want sync or async", s)
}

// FullPolicy is what async mode does when the journal is full while the
// peer is connected. (While it is not, a full journal always falls back to
// the bitmap: writers are never held for a peer that is away.)
type FullPolicy uint8

// Policies for a full journal.
const (
	// Throttle makes writers wait until the peer made room (the default):
	// the application slows to the link's pace and the peer stays
	// crash-consistent.
	Throttle FullPolicy = iota
	// FallBackToLogging keeps writers going: writes stop being journaled
	// and are tracked in the dirty bitmap, and once the journal drained the
	// Mirror resyncs those blocks by itself. During that resync the peer is
	// not crash-consistent.
	FallBackToLogging
)

// String is the name ParseFullPolicy reads back.
func (p FullPolicy) String() string {
	if p == FallBackToLogging {
		return "logging"
	}
	return "throttle"
}

// ParseFullPolicy parses "throttle" or "logging".
func ParseFullPolicy(s string) (FullPolicy, error) {
	switch s {
	case "throttle":
		return Throttle, nil
	case "logging":
		return FallBackToLogging, nil
	}
	return 0, fmt.Errorf("journal-full policy %q: want throttle or logging", s)
}

// How the last reconnect brought the peer up to date (Status.LastCatchUp).
const (
	CatchUpJournal = "journal"
	CatchUpBitmap  = "bitmap"
)
