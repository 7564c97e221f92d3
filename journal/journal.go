package journal

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Options configure a new journal.
type Options struct {
	// Capacity is the ring size in bytes (default DefaultCapacity, at least
	// MinCapacity). It bounds how far the peer may lag behind.
	Capacity int64
	// FirstSeq is the sequence number of the first record (default 1): a
	// host that starts writing continues the numbering it applied as a
	// secondary.
	FirstSeq uint64
}

// Recovery is what Open found in the file.
type Recovery struct {
	Records    uint64 // valid records kept
	TornTail   bool   // a partly written record at the end was dropped
	TornOffset int64  // the file offset of that record
	TornReason string // why it did not pass
	// Clean: the journal was closed (every record durable) and not opened
	// since. Otherwise its process ended without Close.
	Clean bool
	// Rebooted: the host booted since the journal was last opened (or its
	// boot ID cannot be read). If the journal was not closed either, the
	// page cache was lost: records that were not yet durable, and the
	// local writes that went with them, may be missing in any combination.
	Rebooted bool
}

// Stats is a snapshot of the journal's occupancy.
type Stats struct {
	ID       uint64
	Capacity int64  // ring bytes
	Used     int64  // bytes held by records not yet truncated
	Oldest   uint64 // oldest record held; equals Next when empty
	Next     uint64 // sequence number the next append gets
	Written  uint64 // every record up to this one is written
	Durable  uint64 // every record up to this one is durable
	Waiting  int    // appends waiting for room
}

// Journal is an open journal file. Its methods are safe for concurrent use,
// except Close, which must not run concurrently with Append.
type Journal struct {
	f        *os.File
	id       uint64
	seed     uint32
	capacity uint64
	open     uint32
	recovery Recovery
	bufs     bufPool

	mu        sync.Mutex
	tailSeq   uint64
	tailPos   uint64
	nextSeq   uint64
	headPos   uint64
	positions posRing   // ring positions of records tailSeq..nextSeq-1
	writing   []writing // appends being written, in sequence order
	written   uint64    // every record up to this one is written
	maxDone   uint64    // the highest record written
	durable   uint64
	appended  chan struct{} // closed when written advances; nil without a waiter
	freed     chan struct{} // closed when Truncate frees room; nil without a waiter
	waiting   int
	closed    bool
	err       error // sticky: a failed write or sync poisons the journal

	syncing   bool
	syncStart uint64 // sync rounds started
	syncDone  uint64 // sync rounds finished
	synced    chan struct{}

	// held are the records appended with AppendHeld and not released yet,
	// in sequence order, the first one unreleased (under mu).
	held []writing

	handoff handoff // under mu

	truncMu  sync.Mutex // one Truncate or Resume at a time
	sbMu     sync.Mutex // superblock writes; held while a new tail is published
	sbGen    uint64
	safeSlot int // the slot holding the last superblock made durable

	// The rest of the superblock (under sbMu): see Authority, Stop, Close.
	authority uint64
	stopped   bool
	reason    string
	clean     bool
	boot      [16]byte
}

// writing is an append being written, or a held record (done: released).
type writing struct {
	seq  uint64
	done bool
}

// Recovered says what Open found.
func (j *Journal) Recovered() Recovery { return j.recovery }

// ID identifies this journal: sequence numbers are comparable only between
// records of one journal.
func (j *Journal) ID() uint64 { return j.id }

// Capacity is the ring size in bytes.
func (j *Journal) Capacity() int64 { return int64(j.capacity) }

// Stats returns the occupancy.
func (j *Journal) Stats() Stats {
	j.mu.Lock()
	defer j.mu.Unlock()
	return Stats{
		ID:       j.id,
		Capacity: int64(j.capacity),
		Used:     int64(j.headPos - j.tailPos),
		Oldest:   j.tailSeq,
		Next:     j.nextSeq,
		Written:  j.written,
		Durable:  j.durable,
		Waiting:  j.waiting,
	}
}

// Next is the sequence number the next append gets.
func (j *Journal) Next() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.nextSeq
}

// Oldest is the oldest sequence number the journal holds (Next when empty).
func (j *Journal) Oldest() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.tailSeq
}

// Durable is the highest sequence number up to which every record is durable.
func (j *Journal) Durable() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.durable
}

// Append adds r to the journal and returns its sequence number once it and
// every record before it are written (not yet durable: see Sync). A crash
// of the process alone (the page cache survives) therefore keeps every
// record whose Append returned: none is behind a hole that Open would take
// for the torn end. While the ring is full it waits for Truncate to make
// room, or for ctx to end.
func (j *Journal) Append(ctx context.Context, r Record) (uint64, error) {
	return j.append(ctx, r, true, false)
}

// TryAppend is Append that fails with ErrFull instead of waiting for room.
func (j *Journal) TryAppend(r Record) (uint64, error) {
	return j.append(context.Background(), r, false, false)
}

// AppendHeld is Append for a write that the caller applies to its own disk
// after the append: the record is held until Release(seq). A cursor does
// not return a held record, or any after it, and Truncate does not free
// it, so a peer never acknowledges, and the journal never forgets, a write
// that is not on the local disk yet.
func (j *Journal) AppendHeld(ctx context.Context, r Record) (uint64, error) {
	return j.append(ctx, r, true, true)
}

// TryAppendHeld is AppendHeld that fails with ErrFull instead of waiting
// for room.
func (j *Journal) TryAppendHeld(r Record) (uint64, error) {
	return j.append(context.Background(), r, false, true)
}

// Release ends the hold of AppendHeld on seq.
func (j *Journal) Release(seq uint64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.releaseLocked(seq)
}

func (j *Journal) releaseLocked(seq uint64) {
	for i := range j.held {
		if j.held[i].seq == seq {
			j.held[i].done = true
			break
		}
	}
	n := 0
	for n < len(j.held) && j.held[n].done {
		n++
	}
	if n == 0 {
		return
	}
	j.held = append(j.held[:0], j.held[n:]...)
	if j.appended != nil { // cursors waiting for the held record
		close(j.appended)
		j.appended = nil
	}
}

// readyLocked reports whether a cursor may return record seq: it is
// written, with every record before it, and neither it nor an earlier one
// is held. j.mu is held.
func (j *Journal) readyLocked(seq uint64) bool {
	return seq <= j.written && (len(j.held) == 0 || seq < j.held[0].seq)
}

func (j *Journal) append(ctx context.Context, r Record, wait, hold bool) (uint64, error) {
	if err := r.check(); err != nil {
		return 0, err
	}
	size := uint64(HeaderSize)
	if r.Kind == KindWrite {
		size += uint64(len(r.Data))
	}
	if size > j.capacity {
		return 0, fmt.Errorf("%w: a record of %d bytes is larger than the %d-byte ring", ErrBadRecord, size, j.capacity)
	}
	seq, pos, handoff, err := j.reserve(ctx, size, wait, hold, r.Kind == KindWrite)
	if err != nil {
		return 0, err
	}
	bp, werr := j.writeRecord(seq, pos, &r, handoff)
	if bp != nil {
		j.mu.Lock()
		if r.Kind == KindWrite && werr == nil && j.handoff.room(cap(*bp)) {
			r.Data = (*bp)[HeaderSize:size]
			j.handoff.add(seq, bp, r)
			bp = nil
		}
		j.mu.Unlock()
		if bp != nil {
			j.bufs.put(bp)
		}
	}
	if err := j.finish(seq, hold, werr); err != nil {
		return 0, err
	}
	return seq, nil
}

// reserve gives the next record of size bytes its sequence number and
// ring position, once the ring has room for it (or fails with ErrFull if
// not wait), and says whether the handoff has room for it now (if write).
func (j *Journal) reserve(ctx context.Context, size uint64, wait, hold, write bool) (seq, pos uint64, handoff bool, err error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for {
		if j.closed {
			return 0, 0, false, ErrClosed
		}
		if j.err != nil {
			return 0, 0, false, j.err
		}
		if j.headPos+size-j.tailPos <= j.capacity {
			break
		}
		if !wait {
			return 0, 0, false, ErrFull
		}
		if j.freed == nil {
			j.freed = make(chan struct{})
		}
		ch := j.freed
		j.waiting++
		j.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			err = fmt.Errorf("%w: %w", ErrFull, ctx.Err())
		}
		j.mu.Lock()
		j.waiting--
		if err != nil {
			return 0, 0, false, err
		}
	}
	seq, pos = j.nextSeq, j.headPos
	j.nextSeq++
	j.headPos += size
	j.positions.push(pos)
	j.writing = append(j.writing, writing{seq: seq})
	if hold {
		j.held = append(j.held, writing{seq: seq})
	}
	return seq, pos, write && j.handoff.room(int(size)), nil
}

// finish records that the write of record seq ended with werr and, if it
// succeeded, waits until every record before it is written too (see
// Append).
func (j *Journal) finish(seq uint64, hold bool, werr error) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if werr != nil && j.err == nil {
		j.poison(fmt.Errorf("journal write of seq %d: %w", seq, werr))
	}
	j.maxDone = max(j.maxDone, seq)
	for i := range j.writing {
		if j.writing[i].seq == seq {
			j.writing[i].done = true
			break
		}
	}
	n := 0
	for n < len(j.writing) && j.writing[n].done {
		n++
	}
	if n > 0 {
		j.written = j.writing[n-1].seq
		j.writing = append(j.writing[:0], j.writing[n:]...)
		if j.appended != nil {
			close(j.appended)
			j.appended = nil
		}
	}
	for werr == nil && j.written < seq && j.err == nil && !j.closed {
		if j.appended == nil {
			j.appended = make(chan struct{})
		}
		ch := j.appended
		j.mu.Unlock()
		<-ch
		j.mu.Lock()
	}
	if j.written >= seq && werr == nil {
		return nil
	}
	if hold {
		j.releaseLocked(seq)
	}
	if j.err != nil {
		return j.err
	}
	return ErrClosed
}

// poison makes every later append and sync fail with err and wakes the
// goroutines that wait for room or records. j.mu is held.
func (j *Journal) poison(err error) {
	j.err = err
	for _, ch := range []chan struct{}{j.freed, j.appended} {
		if ch != nil {
			close(ch)
		}
	}
	j.freed, j.appended = nil, nil
}

// Sync makes every append that returned before the call durable, and
// Durable at least the highest of their sequence numbers. Concurrent
// callers share one fdatasync (group commit).
func (j *Journal) Sync(ctx context.Context) error {
	j.mu.Lock()
	// Appends complete out of order: wait until those before the highest
	// one that completed are written too, so that Durable covers it.
	for target := j.maxDone; j.written < target && j.err == nil && !j.closed; {
		if j.appended == nil {
			j.appended = make(chan struct{})
		}
		ch := j.appended
		j.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		j.mu.Lock()
	}
	need := j.syncStart + 1 // a round that starts after this point
	for j.syncDone < need {
		if j.err != nil {
			break
		}
		if j.closed {
			j.mu.Unlock()
			return ErrClosed
		}
		if !j.syncing {
			j.syncing = true
			j.syncStart++
			round, snap := j.syncStart, j.written
			j.mu.Unlock()
			err := unix.Fdatasync(int(j.f.Fd()))
			j.mu.Lock()
			j.syncing = false
			j.syncDone = round
			if err != nil && j.err == nil {
				j.poison(fmt.Errorf("journal sync: %w", err))
			} else if snap > j.durable {
				j.durable = snap
			}
			close(j.synced)
			j.synced = make(chan struct{})
			if err == nil {
				j.mu.Unlock()
				// Record the durable point for Open's corruption check; it
				// becomes durable itself with the next sync.
				_ = j.writeSuperCurrent()
				j.mu.Lock()
			}
			continue
		}
		ch := j.synced
		j.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		j.mu.Lock()
	}
	err := j.err
	j.mu.Unlock()
	return err
}

// Truncate frees every record up to and including seq (clamped to the
// records written so far). The new oldest record is made durable in the
// superblock before the room can be reused.
func (j *Journal) Truncate(seq uint64) error {
	j.truncMu.Lock()
	defer j.truncMu.Unlock()
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return ErrClosed
	}
	seq = min(seq, j.written)
	if len(j.held) > 0 {
		seq = min(seq, j.held[0].seq-1)
	}
	if seq < j.tailSeq {
		j.mu.Unlock()
		return nil
	}
	newTail := seq + 1
	newPos := j.headPos
	if newTail < j.nextSeq {
		newPos = j.positions.at(int(newTail - j.tailSeq))
	}
	j.mu.Unlock()

	j.sbMu.Lock()
	defer j.sbMu.Unlock()
	if err := j.writeSuperLocked(newTail, newPos, true); err != nil {
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
	if j.freed != nil {
		close(j.freed)
		j.freed = nil
	}
	drop := j.handoff.dropBelow(newTail)
	j.mu.Unlock()
	for _, bp := range drop {
		j.bufs.put(bp)
	}
	return nil
}

// Close makes the journal durable and closes the file. Appends waiting for
// room fail with ErrClosed. The next Open finds it Clean, unless it was
// poisoned.
func (j *Journal) Close() error {
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return nil
	}
	j.mu.Unlock()
	err := j.Sync(context.Background())
	j.mu.Lock()
	j.closed = true
	for _, ch := range []chan struct{}{j.freed, j.appended} {
		if ch != nil {
			close(ch)
		}
	}
	j.freed, j.appended = nil, nil
	tailSeq, tailPos := j.tailSeq, j.tailPos
	j.handoff.dropBelow(j.nextSeq) // to the garbage collector
	j.mu.Unlock()
	if err == nil {
		j.sbMu.Lock()
		j.clean = true
		err = j.writeSuperLocked(tailSeq, tailPos, true)
		j.sbMu.Unlock()
	}
	return errors.Join(err, j.f.Close())
}
