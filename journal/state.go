package journal

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// writeSuperCurrent writes the superblock with the current tail, without
// waiting for it to be durable.
func (j *Journal) writeSuperCurrent() error {
	j.sbMu.Lock()
	defer j.sbMu.Unlock()
	j.mu.Lock()
	tailSeq, tailPos := j.tailSeq, j.tailPos
	j.mu.Unlock()
	return j.writeSuperLocked(tailSeq, tailPos, false)
}

func (j *Journal) writeSuper(tailSeq, tailPos uint64, sync bool) error {
	j.sbMu.Lock()
	defer j.sbMu.Unlock()
	return j.writeSuperLocked(tailSeq, tailPos, sync)
}

// writeSuperLocked writes the slot that does not hold the last durable
// superblock, so that a torn write leaves that one; with sync it then
// becomes the durable one. sbMu is held.
func (j *Journal) writeSuperLocked(tailSeq, tailPos uint64, sync bool) error {
	j.mu.Lock()
	durable := j.durable
	j.mu.Unlock()
	j.sbGen++
	sb := superblock{gen: j.sbGen, id: j.id, capacity: j.capacity, tailSeq: tailSeq, tailPos: tailPos, durable: durable, open: j.open,
		stopped: j.stopped, clean: j.clean, authority: j.authority, boot: j.boot, reason: j.reason}
	slot := 1 - j.safeSlot
	var b [superSize]byte
	sb.encode(b[:])
	if !sync {
		_, err := j.f.WriteAt(b[:], int64(slot)*SlotSize)
		return err
	}
	// Durable by itself (RWF_DSYNC syncs the range written), not with
	// an fdatasync of the file: that would also write the ring's dirty
	// records, which nothing here needs durable (the durable field only
	// counts records a Sync made so), and on a truncation every
	// FlushEvery bytes it was a second durable copy of all data shipped.
	if err := pwriteDurable(j.f, b[:], int64(slot)*SlotSize); err != nil {
		return err
	}
	j.safeSlot = slot
	return nil
}

// Authority is the oldest position from which a peer may be caught up:
// a peer whose durable position in this journal is at or past it holds
// the volume as it was after that record, so the records after its
// position are all it lacks. NoAuthority: no peer may be caught up from
// this journal before a bitmap resync set the authority again; why says
// why. A new journal has none. The journal only stores the authority; its
// user keeps the promise (docs/journal.md).
func (j *Journal) Authority() (seq uint64, why string) {
	j.sbMu.Lock()
	defer j.sbMu.Unlock()
	if j.authority == NoAuthority {
		return NoAuthority, j.reason
	}
	return j.authority, ""
}

// SetAuthority makes seq the authority, durably. Setting NoAuthority, with
// why, never fails silently into the old authority: if the superblock
// cannot be written, the journal is poisoned and its file removed, so that
// no later Open finds it; it returns an error only if that fails too. A
// stopped journal has no authority until Resume.
func (j *Journal) SetAuthority(seq uint64, why string) error {
	if seq != NoAuthority {
		why = ""
	}
	return j.changeSuper(seq == NoAuthority, func() error {
		if j.stopped && seq != NoAuthority {
			return fmt.Errorf("journal: authority %d for a stopped journal", seq)
		}
		j.authority = seq
		if !j.stopped {
			j.reason = why
		}
		return nil
	})
}

// Stop records durably that journaling stopped: from now on the local disk
// may receive writes that no record holds, so the records must never be
// redone onto it, and no peer may be caught up from them (the authority
// becomes NoAuthority). The first reason given is kept. Like SetAuthority
// to NoAuthority, it removes the file if the superblock cannot be written,
// and fails only if that fails too.
func (j *Journal) Stop(why string) error {
	return j.changeSuper(true, func() error {
		if !j.stopped {
			j.stopped, j.reason = true, why
		}
		j.authority = NoAuthority
		return nil
	})
}

// Stopped reports whether journaling stopped (Stop), and why.
func (j *Journal) Stopped() (bool, string) {
	j.sbMu.Lock()
	defer j.sbMu.Unlock()
	return j.stopped, j.reason
}

// changeSuper changes the superblock's state with change and writes it
// durably. If that fails, the journal is poisoned and, for a conservative
// change (one that only takes promises back), the file is removed: a
// journal that is not found is never resumed.
func (j *Journal) changeSuper(conservative bool, change func() error) error {
	j.sbMu.Lock()
	defer j.sbMu.Unlock()
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return ErrClosed
	}
	tailSeq, tailPos := j.tailSeq, j.tailPos
	j.mu.Unlock()
	if err := change(); err != nil {
		return err
	}
	err := j.writeSuperLocked(tailSeq, tailPos, true)
	if err == nil {
		return nil
	}
	err = fmt.Errorf("journal superblock: %w", err)
	rerr := os.Remove(j.f.Name())
	if rerr == nil {
		rerr = syncDir(j.f.Name())
	}
	j.mu.Lock()
	if j.err == nil {
		if rerr == nil {
			j.poison(fmt.Errorf("%w; the journal file was removed", err))
		} else {
			j.poison(err)
		}
	}
	j.mu.Unlock()
	if conservative && rerr == nil {
		return nil
	}
	return errors.Join(err, rerr)
}

// Resume clears a Stop: it frees every record (they must never be redone:
// the local disk may hold newer writes) and journaling starts again from
// the next sequence number, with NoAuthority until a bitmap resync sets
// one. No append may be in progress.
func (j *Journal) Resume() error {
	j.truncMu.Lock()
	defer j.truncMu.Unlock()
	j.mu.Lock()
	if j.closed || j.err != nil {
		err := j.err
		j.mu.Unlock()
		if err == nil {
			err = ErrClosed
		}
		return err
	}
	if j.written != j.nextSeq-1 || len(j.held) > 0 {
		j.mu.Unlock()
		return errors.New("journal: Resume with appends in progress")
	}
	newTail, newPos := j.nextSeq, j.headPos
	j.mu.Unlock()

	j.sbMu.Lock()
	defer j.sbMu.Unlock()
	if !j.stopped {
		return nil
	}
	j.stopped, j.authority = false, NoAuthority
	j.reason = "journaling resumed after it stopped: no bitmap resync completed since"
	if err := j.writeSuperLocked(newTail, newPos, true); err != nil {
		// The slot written last before this one still says stopped.
		j.stopped = true
		j.mu.Lock()
		if j.err == nil {
			j.poison(fmt.Errorf("journal superblock: %w", err))
		}
		j.mu.Unlock()
		return err
	}
	j.mu.Lock()
	j.positions.drop(int(newTail - j.tailSeq))
	j.tailSeq, j.tailPos = newTail, newPos
	j.handoff.dropBelow(newTail) // to the garbage collector
	if j.freed != nil {
		close(j.freed)
		j.freed = nil
	}
	j.mu.Unlock()
	return nil
}

// pwriteDurable writes b at off in f and makes that range durable.
func pwriteDurable(f *os.File, b []byte, off int64) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var n int
	var werr error
	if err := rc.Write(func(fd uintptr) bool {
		n, werr = unix.Pwritev2(int(fd), [][]byte{b}, off, unix.RWF_DSYNC)
		return werr != unix.EAGAIN
	}); err != nil {
		return err
	}
	if werr == unix.EOPNOTSUPP || werr == unix.EINVAL || werr == unix.ENOSYS {
		// A kernel or file system without RWF_DSYNC: the whole file then.
		if _, err := f.WriteAt(b, off); err != nil {
			return err
		}
		return unix.Fdatasync(int(f.Fd()))
	}
	if werr != nil {
		return fmt.Errorf("write at %d: %w", off, werr)
	}
	if n != len(b) {
		return fmt.Errorf("write at %d: %d of %d bytes: %w", off, n, len(b), io.ErrShortWrite)
	}
	return nil
}
