package mirror

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/ldmirror/ldmirror/blockdev"

	"github.com/ldmirror/ldmirror/journal"
)

// JournalOptions configure OpenJournal.
type JournalOptions struct {
	// Capacity is the ring size of a new journal (default
	// journal.DefaultCapacity). A journal of another size is not resumed.
	Capacity int64
	// FirstSeq: a new journal numbers its records from at least this (the
	// host's last applied position as a secondary, plus one).
	FirstSeq uint64
	// Discard, if set, is why the journal must not be resumed even if it
	// could be (the caller resyncs the whole volume, say).
	Discard string
}

// JournalStart is the journal a primary term starts with, and how.
type JournalStart struct {
	Journal *journal.Journal
	// Resumed: the journal of the previous run goes on; its records were
	// redone onto the local device.
	Resumed bool
	// Redone is the number of records written again onto the local device.
	Redone uint64
	// Discarded says why the journal found was not resumed ("" if it was,
	// or if there was none); DiscardedID is its identity (0 if unreadable).
	Discarded   string
	DiscardedID uint64
}

// ErrRedo reports a journal that could not be redone onto the local device:
// the primary must not serve a disk that may lack journaled writes.
var ErrRedo = errors.New("redo the journal onto the local disk")

// OpenJournal opens the journal at path for a primary term over dev, the
// local device, before anything is served from it. It resumes the journal
// of the previous run unless journaling had stopped (Stop: dev received
// writes that no record holds), its size changed, opt.Discard says not
// to, or it cannot be read; then it starts a new one that continues the
// numbering. A journal that was not stopped is first redone onto dev, all
// its records oldest to newest, even one about to be discarded: a write is
// appended before it is written locally, so the records complete the
// local writes a crash interrupted (docs/journal.md). If the host went down
// with the journal open (not closed, and booted since), records and local
// writes that were not durable may be lost in any combination, and the
// journal is discarded without a redo: the peer needs a bitmap resync.
func OpenJournal(ctx context.Context, path string, dev blockdev.Device, opt JournalOptions) (JournalStart, error) {
	var st JournalStart
	capacity := opt.Capacity
	if capacity == 0 {
		capacity = journal.DefaultCapacity
	}
	first := max(opt.FirstSeq, 1)
	old, err := journal.Open(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		st.Discarded = fmt.Sprintf("the journal cannot be read (%v)", err)
	default:
		first = max(first, old.Next())
		st.DiscardedID = old.ID()
		rec := old.Recovered()
		if stopped, why := old.Stopped(); stopped {
			st.Discarded = "journaling had stopped: " + why
		} else if !rec.Clean && rec.Rebooted {
			// The journal is made durable only when it is closed: the
			// peer may hold records it lost and would number again, and a
			// redo could write a record over a newer write that an
			// application flush made durable on the local disk. Neither
			// is needed: the recovered blocks are resynced by bitmap.
			st.Discarded = "the host went down with the journal open: writes that were not yet durable may be lost on either side"
		} else {
			if st.Redone, err = Redo(ctx, old, dev); err != nil {
				old.Close()
				return st, err
			}
			switch {
			case opt.Discard != "":
				st.Discarded = opt.Discard
			case old.Capacity() != capacity:
				st.Discarded = fmt.Sprintf("the journal size changed from %d to %d bytes", old.Capacity(), capacity)
			}
		}
		if st.Discarded == "" {
			st.Journal, st.Resumed, st.DiscardedID = old, true, 0
			return st, nil
		}
		if err := old.Close(); err != nil {
			return st, fmt.Errorf("close the old journal: %w", err)
		}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return st, fmt.Errorf("replace the journal: %w", err)
	}
	j, err := journal.Create(path, journal.Options{Capacity: capacity, FirstSeq: first})
	if err != nil {
		return st, fmt.Errorf("journal: %w", err)
	}
	st.Journal = j
	return st, nil
}

// Redo writes the records j holds onto dev, oldest to newest, and flushes
// dev; it returns how many there were. Writing a record again is harmless:
// in the end every block holds its newest record, which is what the local
// disk holds once every journaled write completed. It is wrong for a
// stopped journal, whose records may be older than unjournaled writes.
func Redo(ctx context.Context, j *journal.Journal, dev blockdev.Device) (uint64, error) {
	from, to := j.Oldest(), j.Next()
	if from == to {
		return 0, nil
	}
	c, err := j.NewCursor(from)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", ErrRedo, err)
	}
	var buf []byte
	for seq := from; seq < to; seq++ {
		rec, err := c.Next(ctx, buf)
		if err != nil {
			return seq - from, fmt.Errorf("%w: record %d: %w", ErrRedo, seq, err)
		}
		switch rec.Kind {
		case journal.KindWrite:
			_, err = dev.WriteAt(rec.Data, rec.Offset)
			buf = rec.Data[:0]
		case journal.KindTrim:
			err = dev.Trim(rec.Offset, rec.Length)
		}
		if err != nil {
			return seq - from, fmt.Errorf("%w: record %d (%s of %d bytes at %d): %w", ErrRedo, seq, rec.Kind, rec.Length, rec.Offset, err)
		}
	}
	if err := dev.Flush(); err != nil {
		return to - from, fmt.Errorf("%w: flush: %w", ErrRedo, err)
	}
	return to - from, nil
}
