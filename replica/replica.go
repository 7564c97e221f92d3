package replica

import (
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/ldmirror/ldmirror/blockdev"

	"github.com/ldmirror/ldmirror/journal"
	"github.com/ldmirror/ldmirror/transport"
)

// Replica applies the primary's requests to the secondary's device
// (DESIGN invariant 8): a write or trim waits for every earlier unapplied
// request it overlaps and for an earlier flush barrier; a flush waits for
// every earlier request and then flushes the device. An ordered request (a
// journal catch-up) is a barrier too: it runs alone, after every earlier
// request, so the device always holds a prefix of the primary's writes.
//
// A write or trim with nothing to wait for is applied at once on the
// connection's reader; writes and trims that must wait queue, in arrival
// order, for one goroutine that applies them as their turn comes; flushes
// and checksums, which take long, each get a goroutine, so requests that
// do not overlap a slow one are not held up by it. Applying writes one
// after another gives up little: a filesystem serializes buffered writes
// to one file anyway (ext4 holds the inode lock), while a goroutine per
// write cost a quarter of the secondary's CPU, and the writes held behind
// a flush, released together, spun on that lock (issue 7,
// docs/benchmarks.md). Acks of requests applied on the reader leave in one
// batch.
//
// For journaled requests (async mode) the Replica tracks its applied
// position: the journal sequence number of the last one applied with every
// request before it. At each flush it makes that position durable (in the
// AppliedFile, if set) and answers the flush with it, 16 bytes: journal id
// and seq, big-endian. It implements transport.Handler.
type Replica struct {
	blockSize int
	log       *slog.Logger

	devMu   sync.RWMutex
	dev     blockdev.Device
	failure *blockdev.Failure // the disk's first I/O error: from then on nothing touches it
	// replaced is closed by Reattach, which makes a new one: a watch of
	// failure must then watch the new disk's.
	replaced chan struct{}

	mu      sync.Mutex
	pending []*applyOp // in arrival (sequence) order; finished ones are trimmed from the front
	wg      sync.WaitGroup
	// waiting holds the writes and trims that wait for earlier requests,
	// in arrival order, from waitHead on; a queue goroutine runs while
	// queueing is set.
	waiting  []waitingOp
	waitHead int
	queueing bool
	applied  journal.Position // last journaled request applied with all before it
	stuck    bool             // a journaled request failed: applied stays where it is

	durableMu sync.Mutex
	durable   journal.Position // applied position made durable by the last flush
	file      *journal.AppliedFile

	// parallel applies every request on its own goroutine and ignores the
	// Ordered flag (tests show what breaks then).
	parallel bool

	appliedSeq atomic.Uint64 // highest sequence applied with every one before it
	writes     atomic.Uint64
	bytes      atomic.Uint64
	flushes    atomic.Uint64
	failures   atomic.Uint64
}

type applyOp struct {
	req     *transport.Request // until it is applied
	kind    transport.Kind
	start   int64
	end     int64 // exclusive; start == end for a flush
	seq     uint64
	jpos    journal.Position // of a journaled request; zero otherwise
	ordered bool
	// done is closed when the op is applied; made only once a later
	// request waits for it (under mu), as most never need one.
	done     chan struct{}
	finished bool
	failed   bool
}

// waitingOp is a queued write or trim and what it waits for.
type waitingOp struct {
	op   *applyOp
	deps []chan struct{}
}

func (op *applyOp) barrier() bool { return op.kind == transport.KindFlush || op.ordered }

// opPool recycles applyOps: they leave pending in order, after they finished.
var opPool = sync.Pool{New: func() any { return new(applyOp) }}

// New returns a Replica applying to dev, whose checksum replies
// cover blocks of blockSize bytes.
func New(dev blockdev.Device, blockSize int, log *slog.Logger) *Replica {
	if log == nil {
		log = slog.Default()
	}
	return &Replica{dev: dev, blockSize: blockSize, log: log, failure: blockdev.NewFailure(), replaced: make(chan struct{})}
}

// Handle applies req, or schedules it after the requests it depends on.
func (r *Replica) Handle(req *transport.Request) {
	op := opPool.Get().(*applyOp)
	*op = applyOp{req: req, kind: req.Kind, start: req.Offset, end: req.Offset + req.Length, seq: req.Seq}
	if req.JournalSeq != 0 {
		op.jpos = journal.Position{ID: req.JournalID, Seq: req.JournalSeq}
	}
	quick := !r.parallel && (req.Kind == transport.KindWrite || req.Kind == transport.KindTrim)
	var deps []chan struct{}
	r.wg.Add(1) // before a running queue goroutine can see op
	r.mu.Lock()
	op.ordered = req.Ordered && !r.parallel
	for _, p := range r.pending {
		if p.finished {
			continue
		}
		if op.barrier() || p.barrier() || (p.start < op.end && op.start < p.end) {
			if p.done == nil {
				p.done = make(chan struct{})
			}
			deps = append(deps, p.done)
		}
	}
	r.pending = append(r.pending, op)
	queued, startQueue := quick && len(deps) > 0, false
	if queued {
		r.waiting = append(r.waiting, waitingOp{op: op, deps: deps})
		startQueue = !r.queueing
		r.queueing = true
	}
	r.mu.Unlock()
	switch {
	case quick && !queued:
		// Nothing to wait for and quick: apply it on the connection's
		// reader, which saves a goroutine and a wakeup per write.
		r.apply(op, nil)
	case startQueue:
		r.wg.Add(1)
		go r.runQueue()
	case !queued:
		go r.apply(op, deps)
	}
}

// runQueue applies the waiting writes and trims in arrival order until
// none is left. Each waits only for earlier requests, so the order cannot
// deadlock.
func (r *Replica) runQueue() {
	defer r.wg.Done()
	for {
		r.mu.Lock()
		if r.waitHead == len(r.waiting) {
			r.waiting, r.waitHead, r.queueing = r.waiting[:0], 0, false
			r.mu.Unlock()
			return
		}
		w := r.waiting[r.waitHead]
		r.waiting[r.waitHead] = waitingOp{}
		r.waitHead++
		r.mu.Unlock()
		r.apply(w.op, w.deps)
	}
}

func (r *Replica) apply(op *applyOp, deps []chan struct{}) {
	defer r.wg.Done()
	for _, d := range deps {
		<-d
	}
	req := op.req
	reply, err := r.applyToDisk(op)
	if err != nil {
		r.failures.Add(1)
		err = fmt.Errorf("%s seq %d at offset %d: %w", req.Kind, req.Seq, req.Offset, err)
		r.log.Error("apply failed on the secondary", "err", err)
	}
	r.finish(op, err)
	req.Reply(reply, err)
}

// applyToDisk runs op's request on the device, unless the disk failed
// before: then it refuses it untouched. The first failure latches.
func (r *Replica) applyToDisk(op *applyOp) (reply []byte, err error) {
	r.devMu.RLock()
	defer r.devMu.RUnlock()
	if err := r.failure.Err(); err != nil {
		return nil, err
	}
	req := op.req
	switch req.Kind {
	case transport.KindChecksum:
		buf := make([]byte, req.Length)
		if _, err = r.dev.ReadAt(buf, req.Offset); err == nil {
			reply = transport.BlockDigests(buf, r.blockSize, &req.Key)
		}
	case transport.KindWrite:
		_, err = r.dev.WriteAt(req.Data, req.Offset)
		if err == nil {
			r.writes.Add(1)
			r.bytes.Add(uint64(req.Length))
		}
	case transport.KindTrim:
		err = r.dev.Trim(req.Offset, req.Length)
		if err == nil {
			r.writes.Add(1)
		}
	case transport.KindFlush:
		err = r.dev.Flush()
		if err == nil {
			r.flushes.Add(1)
			var pos journal.Position
			if pos, err = r.flushed(op); err == nil {
				reply = transport.AppendPosition(make([]byte, 0, transport.PositionSize), pos.ID, pos.Seq)
			}
		}
	}
	if r.failure.Latch(err) {
		r.log.Error("this host's disk failed: it takes no more writes until an operator attaches it again (ldmirror attach-disk)", "err", r.failure.Err())
	}
	return reply, err
}

// finish records op as applied (or failed) and moves the applied
// positions past the requests finished in order.
func (r *Replica) finish(op *applyOp, err error) {
	r.mu.Lock()
	op.finished, op.failed, op.req = true, err != nil, nil
	if op.done != nil {
		close(op.done)
	}
	n := 0
	for n < len(r.pending) && r.pending[n].finished {
		p := r.pending[n]
		if p.jpos.Seq != 0 && !r.stuck {
			if p.failed {
				r.stuck = true
			} else {
				r.applied = p.jpos
			}
		}
		n++
	}
	if n > 0 {
		r.appliedSeq.Store(r.pending[n-1].seq)
		for _, p := range r.pending[:n] {
			opPool.Put(p) // finished: only its applier's locals remain in use
		}
		m := copy(r.pending, r.pending[n:])
		clear(r.pending[m:])
		r.pending = r.pending[:m]
	}
	r.mu.Unlock()
}

// DiskWatch returns two channels about the disk in use now: failed is
// closed once it fails an I/O, replaced once Reattach puts another in its
// place (whose failure the caller must then watch afresh).
func (r *Replica) DiskWatch() (failed, replaced <-chan struct{}) {
	r.devMu.RLock()
	defer r.devMu.RUnlock()
	return r.failure.Done(), r.replaced
}

// DiskError is the disk's failure (blockdev.ErrDiskFailed), or nil.
func (r *Replica) DiskError() error {
	r.devMu.RLock()
	defer r.devMu.RUnlock()
	return r.failure.Err()
}

// Reattach replaces a failed disk with dev, reopened by the operator's
// attach-disk, once the requests being applied have finished.
//
// The journal position applied stays where the failure left it, but it
// moves again: the primary's next session starts from it (a catch-up
// replays the records that failed, or a bitmap resync covers them), as
// with a restarted secondary. A position left stuck would answer every
// flush with the old one, and an async primary, waiting for room in a
// journal it could never truncate, would stop.
func (r *Replica) Reattach(dev blockdev.Device) {
	r.Wait()
	r.devMu.Lock()
	defer r.devMu.Unlock()
	r.dev, r.failure = dev, blockdev.NewFailure()
	close(r.replaced)
	r.replaced = make(chan struct{})
	r.mu.Lock()
	r.stuck = false
	r.mu.Unlock()
}

// flushed records, after the device flush of op, that the applied position
// is durable: every request before the flush is applied (it is a barrier),
// and so is op itself if it came from the journal.
func (r *Replica) flushed(op *applyOp) (journal.Position, error) {
	r.mu.Lock()
	pos, stuck := r.applied, r.stuck
	r.mu.Unlock()
	if op.jpos.Seq != 0 && !stuck {
		pos = op.jpos
	}
	r.durableMu.Lock()
	defer r.durableMu.Unlock()
	if pos.Seq == 0 { // nothing journaled applied yet: what the file says
		pos = r.durable
	}
	if r.file != nil {
		if err := r.file.Store(pos); err != nil {
			return pos, fmt.Errorf("persist the applied journal position: %w", err)
		}
	}
	r.durable = pos
	return pos, nil
}

// ApplyUnordered makes the replica apply every request on its own
// goroutine, ignoring dependencies and the ordered flag. That is wrong: it
// exists so that the tests of write order can show they fail without it.
// Call it before the first request.
func (r *Replica) ApplyUnordered() { r.parallel = true }

// SetAppliedFile makes the Replica start from the applied position f holds
// and persist it there at every flush. Call it before the first request.
func (r *Replica) SetAppliedFile(f *journal.AppliedFile) {
	r.durableMu.Lock()
	defer r.durableMu.Unlock()
	r.file = f
	r.durable = f.Position()
}

// Wait blocks until every request handed to the Replica was applied.
func (r *Replica) Wait() { r.wg.Wait() }

// Persist makes the applied position durable, as a flush would: call it
// after Wait when the secondary stops. Without it a clean stop would keep
// the position of the last flush, and the next catch-up would replay the
// records applied since over a disk that holds them: for a while some
// blocks would go back to older data while others keep newer, a state
// the primary's file system never was in.
func (r *Replica) Persist() error {
	r.mu.Lock()
	pos := r.applied
	r.mu.Unlock()
	r.durableMu.Lock()
	defer r.durableMu.Unlock()
	if r.file == nil || pos.Seq == 0 || pos == r.durable {
		return nil
	}
	r.devMu.RLock()
	err := r.dev.Flush()
	r.devMu.RUnlock()
	if err != nil {
		return fmt.Errorf("flush before persisting the applied journal position: %w", err)
	}
	if err := r.file.Store(pos); err != nil {
		return fmt.Errorf("persist the applied journal position: %w", err)
	}
	r.durable = pos
	return nil
}

// Status is a snapshot of the secondary's apply counters.
type Status struct {
	AppliedSeq uint64 // highest frame sequence (this connection) applied with all before it
	// JournalID, JournalApplied: the primary's journal and the last record
	// of it applied with every request before it (async mode).
	JournalID      uint64
	JournalApplied uint64
	// JournalDurable is the applied journal seq made durable by the last
	// flush: where a catch-up resumes.
	JournalDurable uint64
	Writes         uint64
	Bytes          uint64
	Flushes        uint64
	Failures       uint64
	Pending        int
}

// Status returns the apply counters.
func (r *Replica) Status() Status {
	r.mu.Lock()
	pending, applied := len(r.pending), r.applied
	r.mu.Unlock()
	r.durableMu.Lock()
	durable := r.durable
	r.durableMu.Unlock()
	if applied.Seq == 0 {
		applied = durable
	}
	return Status{
		JournalID:      applied.ID,
		JournalApplied: applied.Seq,
		JournalDurable: durable.Seq,
		AppliedSeq:     r.appliedSeq.Load(),
		Writes:         r.writes.Load(),
		Bytes:          r.bytes.Load(),
		Flushes:        r.flushes.Load(),
		Failures:       r.failures.Load(),
		Pending:        pending,
	}
}
