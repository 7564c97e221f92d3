package journal

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
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
	bufs     sync.Pool // *[]byte of smallRecord bytes

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

// smallRecord is the largest record written with one system call from a
// pooled buffer; larger ones write the header and the data separately.
const smallRecord = HeaderSize + 64<<10

// Create makes a new journal at path, which must not exist.
func Create(path string, opt Options) (*Journal, error) {
	capacity := opt.Capacity
	if capacity == 0 {
		capacity = DefaultCapacity
	}
	if capacity < MinCapacity || capacity > 1<<40 {
		return nil, fmt.Errorf("journal capacity %d bytes: must be %d to %d", capacity, MinCapacity, int64(1)<<40)
	}
	first := opt.FirstSeq
	if first == 0 {
		first = 1
	}
	var idb [8]byte
	if _, err := rand.Read(idb[:]); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*Journal, error) {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("create journal %s: %w", path, err)
	}
	if err := f.Truncate(RingStart + capacity); err != nil {
		return fail(err)
	}
	sb := superblock{gen: 1, id: binary.BigEndian.Uint64(idb[:]) | 1, capacity: uint64(capacity), tailSeq: first, durable: first - 1,
		clean: true, authority: NoAuthority, boot: bootID(), reason: "new journal: no bitmap resync completed in it yet"}
	var b [superSize]byte
	sb.encode(b[:])
	if _, err := f.WriteAt(b[:], 0); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := syncDir(path); err != nil {
		return fail(err)
	}
	f.Close()
	return Open(path)
}

func syncDir(path string) error {
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Open opens the journal at path and finds its records: sequence numbers
// continue after the last valid one. A torn record at the end is dropped
// (see Recovered); a damaged record before it is an ErrCorrupt error.
func Open(path string) (*Journal, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	j, err := openFile(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open journal %s: %w", path, err)
	}
	return j, nil
}

func openFile(f *os.File) (*Journal, error) {
	var slots [2][superSize]byte
	var sbs [2]superblock
	var errs [2]error
	for i := range slots {
		if _, err := f.ReadAt(slots[i][:], int64(i)*SlotSize); err != nil {
			errs[i] = err
			continue
		}
		sbs[i], errs[i] = decodeSuper(slots[i][:])
	}
	pick := -1
	for i := range sbs {
		if errs[i] == nil && (pick < 0 || sbs[i].gen > sbs[pick].gen) {
			pick = i
		}
	}
	if pick < 0 {
		return nil, fmt.Errorf("%w: slot 0: %v; slot 1: %v", ErrNotJournal, errs[0], errs[1])
	}
	sb := sbs[pick]
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() != RingStart+int64(sb.capacity) {
		return nil, fmt.Errorf("%w: file is %d bytes, the superblock says %d", ErrCorrupt, st.Size(), RingStart+int64(sb.capacity))
	}
	boot := bootID()
	j := &Journal{
		f:         f,
		id:        sb.id,
		seed:      idSum(sb.id),
		capacity:  sb.capacity,
		open:      sb.open + 1,
		tailSeq:   sb.tailSeq,
		tailPos:   sb.tailPos,
		sbGen:     sb.gen,
		safeSlot:  pick,
		synced:    make(chan struct{}),
		authority: sb.authority,
		stopped:   sb.stopped,
		reason:    sb.reason,
		boot:      boot,
	}
	j.recovery.Clean = sb.clean
	j.recovery.Rebooted = boot == [16]byte{} || sb.boot != boot
	j.bufs.New = func() any { b := make([]byte, smallRecord); return &b }
	if err := j.scan(sb.durable); err != nil {
		return nil, err
	}
	// What the scan found is now made durable, and the new open counter
	// recorded, before any record of this session is written: a record
	// left behind by an earlier session after a torn one carries a lower
	// counter than the records that will follow it here. The superblock
	// also records this boot and that the journal is open (not clean).
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		return nil, err
	}
	j.written, j.durable = j.nextSeq-1, j.nextSeq-1
	if err := j.writeSuper(j.tailSeq, j.tailPos, true); err != nil {
		return nil, err
	}
	return j, nil
}

// scan walks the records from the tail and sets the head.
func (j *Journal) scan(durable uint64) error {
	seq, pos := j.tailSeq, j.tailPos
	var hdr [HeaderSize]byte
	var data []byte
	var lastOpen uint32
	for {
		if pos-j.tailPos+HeaderSize > j.capacity {
			break // the ring is full up to here
		}
		if err := j.readRing(hdr[:], pos); err != nil {
			return err
		}
		reason, torn := "", true
		h, err := decodeHeader(hdr[:])
		switch {
		case err != nil:
			reason = err.Error()
			torn = hdr != [HeaderSize]byte{} // zeros: never written
		case h.seq != seq:
			reason = fmt.Sprintf("sequence number %d, expected %d", h.seq, seq)
			torn = h.seq > seq // lower: a record of an earlier lap of the ring
		case h.open < lastOpen || h.open >= j.open:
			reason = fmt.Sprintf("written by open %d after a record of open %d", h.open, lastOpen)
		case pos-j.tailPos+h.size() > j.capacity:
			reason = fmt.Sprintf("%d bytes do not fit in the ring", h.size())
		}
		if reason == "" {
			n := h.dataLen()
			if int64(cap(data)) < n {
				data = make([]byte, n)
			}
			data = data[:n]
			if err := j.readRing(data, pos+HeaderSize); err != nil {
				return err
			}
			if !verify(j.seed, &h, hdr[:], data) {
				reason = "checksum mismatch"
			}
		}
		if reason != "" {
			off := RingStart + int64(pos%j.capacity)
			if seq <= durable {
				return fmt.Errorf("%w: record seq %d at file offset %d: %s (records up to %d were durable)", ErrCorrupt, seq, off, reason, durable)
			}
			if torn {
				j.recovery.TornTail, j.recovery.TornOffset, j.recovery.TornReason = true, off, reason
			}
			break
		}
		j.positions.push(pos)
		lastOpen = h.open
		seq++
		pos += h.size()
		j.recovery.Records++
	}
	j.nextSeq, j.headPos = seq, pos
	return nil
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
	j.mu.Lock()
	for {
		if j.closed {
			j.mu.Unlock()
			return 0, ErrClosed
		}
		if j.err != nil {
			err := j.err
			j.mu.Unlock()
			return 0, err
		}
		if j.headPos+size-j.tailPos <= j.capacity {
			break
		}
		if !wait {
			j.mu.Unlock()
			return 0, ErrFull
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
			j.mu.Lock()
			j.waiting--
			j.mu.Unlock()
			return 0, fmt.Errorf("%w: %w", ErrFull, ctx.Err())
		}
		j.mu.Lock()
		j.waiting--
	}
	seq, pos := j.nextSeq, j.headPos
	j.nextSeq++
	j.headPos += size
	j.positions.push(pos)
	j.writing = append(j.writing, writing{seq: seq})
	if hold {
		j.held = append(j.held, writing{seq: seq})
	}
	j.mu.Unlock()

	err := j.writeRecord(seq, pos, &r)

	j.mu.Lock()
	defer j.mu.Unlock()
	if err != nil && j.err == nil {
		j.poison(fmt.Errorf("journal write of seq %d: %w", seq, err))
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
	if err != nil {
		if hold {
			j.releaseLocked(seq)
		}
		return 0, j.err
	}
	// Wait for the appends before this one: see Append.
	for j.written < seq && j.err == nil && !j.closed {
		if j.appended == nil {
			j.appended = make(chan struct{})
		}
		ch := j.appended
		j.mu.Unlock()
		<-ch
		j.mu.Lock()
	}
	if j.written < seq {
		if hold {
			j.releaseLocked(seq)
		}
		if j.err != nil {
			return 0, j.err
		}
		return 0, ErrClosed
	}
	return seq, nil
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

// writeRecord writes record r as seq at ring position pos.
func (j *Journal) writeRecord(seq, pos uint64, r *Record) error {
	bp := j.bufs.Get().(*[]byte)
	defer j.bufs.Put(bp)
	b := *bp
	putHeader(b, r.Kind, j.open, seq, r.Offset, r.Length)
	sum := recordSum(j.seed, b[:HeaderSize], r.Data)
	binary.BigEndian.PutUint32(b[12:16], sum)
	if HeaderSize+len(r.Data) <= len(b) {
		n := copy(b[HeaderSize:], r.Data)
		return j.writeRing(b[:HeaderSize+n], pos)
	}
	if err := j.writeRing(b[:HeaderSize], pos); err != nil {
		return err
	}
	return j.writeRing(r.Data, pos+HeaderSize)
}

// writeRing writes b at logical ring position pos, wrapping at the end.
func (j *Journal) writeRing(b []byte, pos uint64) error {
	phys := pos % j.capacity
	n := min(uint64(len(b)), j.capacity-phys)
	if _, err := j.f.WriteAt(b[:n], RingStart+int64(phys)); err != nil {
		return err
	}
	if n < uint64(len(b)) {
		_, err := j.f.WriteAt(b[n:], RingStart)
		return err
	}
	return nil
}

// readRing reads b from logical ring position pos, wrapping at the end.
func (j *Journal) readRing(b []byte, pos uint64) error {
	phys := pos % j.capacity
	n := min(uint64(len(b)), j.capacity-phys)
	if _, err := j.f.ReadAt(b[:n], RingStart+int64(phys)); err != nil {
		return fmt.Errorf("journal read at file offset %d: %w", RingStart+int64(phys), err)
	}
	if n < uint64(len(b)) {
		if _, err := j.f.ReadAt(b[n:], RingStart); err != nil {
			return fmt.Errorf("journal read at file offset %d: %w", RingStart, err)
		}
	}
	return nil
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
	if _, err := j.f.WriteAt(b[:], int64(slot)*SlotSize); err != nil {
		return err
	}
	if !sync {
		return nil
	}
	if err := unix.Fdatasync(int(j.f.Fd())); err != nil {
		return err
	}
	j.safeSlot = slot
	return nil
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
	j.mu.Unlock()
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
	if j.freed != nil {
		close(j.freed)
		j.freed = nil
	}
	j.mu.Unlock()
	return nil
}

// Discard stops the journal at path (see Stop), if there is one, so that
// it is never resumed: its host is about to write, or to receive writes,
// that it does not hold. Its numbering is kept. A journal that cannot be
// read is removed. It reports whether it stopped or removed a journal.
func Discard(path, why string) (bool, error) {
	j, err := Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		if rerr := os.Remove(path); rerr != nil {
			return false, errors.Join(err, rerr)
		}
		return true, syncDir(path)
	}
	stopped, _ := j.Stopped()
	if stopped {
		return false, j.Close()
	}
	return true, errors.Join(j.Stop(why), j.Close())
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
	j.mu.Unlock()
	if err == nil {
		j.sbMu.Lock()
		j.clean = true
		err = j.writeSuperLocked(tailSeq, tailPos, true)
		j.sbMu.Unlock()
	}
	return errors.Join(err, j.f.Close())
}

// bootID identifies this boot of the host (zero if unknown): a journal
// opened again in the same boot after its process died still has every
// record its appends wrote, in the page cache.
func bootID() [16]byte {
	var id [16]byte
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return id
	}
	h, err := hex.DecodeString(strings.ReplaceAll(strings.TrimSpace(string(b)), "-", ""))
	if err != nil || len(h) != len(id) {
		return id
	}
	copy(id[:], h)
	return id
}

// posRing is a FIFO of ring positions that grows by doubling.
type posRing struct {
	buf  []uint64
	head int
	n    int
}

func (r *posRing) push(v uint64) {
	if r.n == len(r.buf) {
		nb := make([]uint64, max(64, 2*len(r.buf)))
		for i := range r.n {
			nb[i] = r.buf[(r.head+i)&(len(r.buf)-1)]
		}
		r.buf, r.head = nb, 0
	}
	r.buf[(r.head+r.n)&(len(r.buf)-1)] = v
	r.n++
}

func (r *posRing) at(i int) uint64 { return r.buf[(r.head+i)&(len(r.buf)-1)] }

func (r *posRing) drop(k int) {
	if k <= 0 {
		return
	}
	r.head = (r.head + k) & (len(r.buf) - 1)
	r.n -= k
}
