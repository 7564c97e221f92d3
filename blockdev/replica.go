package blockdev

import (
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/ldmirror/ldmirror/transport"
)

// Replica applies the primary's requests to the secondary's device
// (DESIGN invariant 8): requests that do not overlap are applied in
// parallel; a write or trim waits for every earlier unapplied request it
// overlaps and for an earlier flush barrier; a flush waits for every earlier
// request and then flushes the device. It implements transport.Handler.
type Replica struct {
	dev       Device
	blockSize int
	log       *slog.Logger

	mu      sync.Mutex
	pending []*applyOp // in arrival (sequence) order; finished ones are trimmed from the front
	wg      sync.WaitGroup

	appliedSeq atomic.Uint64 // highest sequence applied with every one before it
	writes     atomic.Uint64
	bytes      atomic.Uint64
	flushes    atomic.Uint64
	failures   atomic.Uint64
}

type applyOp struct {
	req      *transport.Request
	start    int64
	end      int64 // exclusive; start == end for a flush
	done     chan struct{}
	finished bool
}

func (op *applyOp) barrier() bool { return op.req.Kind == transport.KindFlush }

// NewReplica returns a Replica applying to dev, whose checksum replies
// cover blocks of blockSize bytes.
func NewReplica(dev Device, blockSize int, log *slog.Logger) *Replica {
	if log == nil {
		log = slog.Default()
	}
	return &Replica{dev: dev, blockSize: blockSize, log: log}
}

// Handle schedules req after the requests it depends on.
func (r *Replica) Handle(req *transport.Request) {
	op := &applyOp{req: req, start: req.Offset, end: req.Offset + req.Length, done: make(chan struct{})}
	var deps []chan struct{}
	r.mu.Lock()
	for _, p := range r.pending {
		if p.finished {
			continue
		}
		if op.barrier() || p.barrier() || (p.start < op.end && op.start < p.end) {
			deps = append(deps, p.done)
		}
	}
	r.pending = append(r.pending, op)
	r.mu.Unlock()
	r.wg.Add(1)
	go r.apply(op, deps)
}

func (r *Replica) apply(op *applyOp, deps []chan struct{}) {
	defer r.wg.Done()
	for _, d := range deps {
		<-d
	}
	req := op.req
	var err error
	var reply []byte
	switch req.Kind {
	case transport.KindChecksum:
		reply, err = BlockChecksums(r.dev, req.Offset, req.Length, r.blockSize)
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
		}
	}
	if err != nil {
		r.failures.Add(1)
		err = fmt.Errorf("%s seq %d at offset %d: %w", req.Kind, req.Seq, req.Offset, err)
		r.log.Error("apply failed on the secondary", "err", err)
	}
	r.mu.Lock()
	op.finished = true
	close(op.done)
	n := 0
	for n < len(r.pending) && r.pending[n].finished {
		n++
	}
	if n > 0 {
		r.appliedSeq.Store(r.pending[n-1].req.Seq)
		r.pending = append(r.pending[:0], r.pending[n:]...)
	}
	r.mu.Unlock()
	req.Reply(reply, err)
}

// Wait blocks until every request handed to the Replica was applied.
func (r *Replica) Wait() { r.wg.Wait() }

// ReplicaStatus is a snapshot of the secondary's apply counters.
type ReplicaStatus struct {
	AppliedSeq uint64 // highest sequence applied with all before it
	Writes     uint64
	Bytes      uint64
	Flushes    uint64
	Failures   uint64
	Pending    int
}

// Status returns the apply counters.
func (r *Replica) Status() ReplicaStatus {
	r.mu.Lock()
	pending := len(r.pending)
	r.mu.Unlock()
	return ReplicaStatus{
		AppliedSeq: r.appliedSeq.Load(),
		Writes:     r.writes.Load(),
		Bytes:      r.bytes.Load(),
		Flushes:    r.flushes.Load(),
		Failures:   r.failures.Load(),
		Pending:    pending,
	}
}
