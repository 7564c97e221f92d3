package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ldmirror/ldmirror/journal"
	"github.com/ldmirror/ldmirror/mirror"
	"github.com/ldmirror/ldmirror/volume"
)

// openJournal opens the journal for this primary term in async mode
// (resuming the one of the previous run, redone onto the backing file,
// unless it cannot be: see mirror.OpenJournal, and discard says why not).
// Only the journal of this host's own primary terms goes on: a secondary
// term discards it (prepareSecondary), and this term forgets the position
// this host applied in its peer's journal.
func (n *Node) openJournal(discard string) (mirror.AsyncConfig, error) {
	first, err := n.forgetApplied()
	if err != nil {
		return mirror.AsyncConfig{}, err
	}
	path := filepath.Join(n.cfg.Dir, volume.JournalFile)
	st, err := mirror.OpenJournal(context.Background(), path, n.dev,
		mirror.JournalOptions{Capacity: n.cfg.JournalSize, FirstSeq: first, Discard: discard})
	if err != nil {
		return mirror.AsyncConfig{}, fmt.Errorf("journal: %w", err)
	}
	j := st.Journal
	authority, why := j.Authority()
	switch {
	case st.Resumed && authority != journal.NoAuthority:
		n.log.Info("async mode: journal resumed; a peer at or past its authority catches up from it",
			"journal", path, "records_redone", st.Redone, "authority", authority, "next_seq", j.Next())
	case st.Resumed:
		n.log.Warn("async mode: journal resumed without authority: the next catch-up is a bitmap resync",
			"journal", path, "records_redone", st.Redone, "reason", why)
	case st.Discarded != "":
		n.log.Warn("async mode: the journal of the previous run was discarded: the next catch-up is a bitmap resync",
			"reason", st.Discarded, "records_redone", st.Redone, "first_seq", j.Next())
	default:
		n.log.Info("async mode: new journal", "journal", path, "first_seq", j.Next())
	}
	n.log.Info("async mode: writes return once in the journal", "journal", path, "capacity", j.Capacity(), "on_full", n.cfg.OnFull)
	return mirror.AsyncConfig{Journal: j, OnFull: n.cfg.OnFull, Discarded: st.Discarded, DiscardedID: st.DiscardedID}, nil
}

// forgetApplied makes this host forget the position it applied, as a
// secondary, in its peer's journal, and returns the sequence number its own
// journal numbers from at least. A host that writes as primary must not
// later claim that position: its disk no longer holds what it says.
func (n *Node) forgetApplied() (uint64, error) {
	path := filepath.Join(n.cfg.Dir, volume.AppliedFile)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return 1, nil
	}
	af, err := journal.OpenAppliedFile(path)
	if err != nil {
		n.log.Warn("the applied journal position cannot be read; removing it", "err", err)
		if err := os.Remove(path); err != nil {
			return 1, fmt.Errorf("remove the applied journal position: %w", err)
		}
		return 1, nil
	}
	pos := af.Position()
	err = af.Store(journal.Position{Seq: pos.Seq}) // the numbering stays
	return pos.Seq + 1, errors.Join(err, af.Close())
}

// leaveJournal discards the journal of an earlier async primary term, if
// there is one, before this host writes, or takes writes, that it does not
// hold: why says which.
func (n *Node) leaveJournal(why string) error {
	done, err := journal.Discard(filepath.Join(n.cfg.Dir, volume.JournalFile), why)
	if err != nil {
		return fmt.Errorf("discard the journal: %w", err)
	}
	if done {
		n.log.Info("the journal of an earlier async primary term is discarded: it must never be replayed", "reason", why)
	}
	return nil
}
