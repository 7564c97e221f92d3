package mirror

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/ldmirror/ldmirror/bitmap"
	"github.com/ldmirror/ldmirror/journal"
	"github.com/ldmirror/ldmirror/transport"
)

// run ships the journal to p's peer once CatchUp said from where, and
// cleans up when the period ends.
func (a *asyncMirror) run(p *period) {
	defer a.wg.Done()
	var err error
	select {
	case from := <-p.start:
		err = a.ship(p, from)
	case <-p.ctx.Done():
	case <-p.s.Done():
		err = p.s.Err()
	}
	a.end(p, err)
}

// end ends period p: writes from now on are logged as out of sync, and the
// records whose ack never came become out of sync too.
func (a *asyncMirror) end(p *period, err error) {
	p.cancel()
	a.rw.Lock()
	a.mu.Lock()
	if a.cur == p {
		a.cur = nil
	}
	p.failed = true
	marks := p.marks
	p.marks, p.early = nil, nil
	if p.ackWait != nil {
		close(p.ackWait)
		p.ackWait = nil
	}
	a.mu.Unlock()
	a.rw.Unlock()
	for _, e := range marks {
		a.fail(e, true, "")
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		a.m.peerLost(p.s, err)
	}
	close(p.done)
}

type shipped struct {
	call   *transport.Call
	seq    uint64 // 0: a truncation flush
	kind   journal.Kind
	buf    []byte         // the shipper's read buffer, to recycle once acked
	rec    journal.Record // to give back to the journal once acked, if handed off
	marked bool
}

// ship sends records from seq from on, in order, until the period ends.
func (a *asyncMirror) ship(p *period, from uint64) error {
	cur, err := a.j.NewCursor(from)
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	// As many records in flight as the link's window allows: on a distant
	// link the window, not this queue, bounds the shipping rate.
	acks := make(chan shipped, max(256, p.s.Stats().Window))
	trunc := make(chan uint64, 1)
	recycle := make(chan []byte, 256)
	var helpers sync.WaitGroup
	helpers.Add(2)
	ackErr := make(chan error, 1)
	go func() { defer helpers.Done(); ackErr <- a.ackLoop(p, acks, trunc, recycle) }()
	go func() { defer helpers.Done(); a.truncLoop(p, trunc) }()
	// A dead link must end the period even while nothing is in flight.
	var linkErr error
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		select {
		case <-p.s.Done():
			linkErr = p.s.Err()
			p.cancel()
		case <-p.ctx.Done():
		}
	}()

	err = a.sendLoop(p, cur, acks, recycle)
	close(acks)
	aerr := <-ackErr
	p.cancel() // stops the truncator and the watcher
	helpers.Wait()
	<-watchDone
	for _, e := range []error{aerr, linkErr} {
		if err == nil || errors.Is(err, context.Canceled) {
			err = e
		}
	}
	return err
}

// journalOp is record rec as it ships in period p.
func (a *asyncMirror) journalOp(p *period, rec journal.Record) transport.JournalOp {
	op := transport.JournalOp{ID: a.id, Seq: rec.Seq, Offset: rec.Offset, Data: rec.Data}
	switch rec.Kind {
	case journal.KindWrite:
		op.Kind = transport.KindWrite
	case journal.KindTrim:
		op.Kind, op.Length = transport.KindTrim, rec.Length
	case journal.KindFlush:
		op.Kind = transport.KindFlush
	}
	// The catch-up's records go one at a time (catchTo is set before
	// shipping starts); later ones are live writes with their barriers.
	op.Ordered = rec.Seq <= p.catchTo && p.catchFrom != 0
	return op
}

func (a *asyncMirror) sendLoop(p *period, cur *journal.Cursor, acks chan<- shipped, recycle <-chan []byte) error {
	var free [][]byte // data buffers back from the acker
	var sinceFlush int64
	flush := func() error {
		c, err := p.s.SubmitFlush()
		if err != nil {
			return err
		}
		acks <- shipped{call: c}
		sinceFlush = 0
		return nil
	}
	for {
	drain:
		for {
			select {
			case b := <-recycle:
				if len(free) < cap(recycle) {
					free = append(free, b)
				}
			default:
				break drain
			}
		}
		ctx := p.ctx
		var cancel context.CancelFunc
		if !cur.Ready() {
			if sinceFlush > 0 {
				if st := a.j.Stats(); st.Used >= st.Capacity/2 || st.Waiting > 0 {
					if err := flush(); err != nil {
						return err
					}
					continue
				}
				ctx, cancel = context.WithTimeout(p.ctx, a.idleFlush)
			}
		}
		var buf []byte
		if n := len(free); n > 0 {
			buf, free = free[n-1], free[:n-1]
		}
		rec, err := cur.Next(ctx, buf)
		if cancel != nil {
			cancel()
		}
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) && p.ctx.Err() == nil {
				if err := flush(); err != nil {
					return err
				}
				continue
			}
			return err
		}
		// A record ships once written, durable or not (docs/journal.md,
		// "What a crash loses"): a crash of this process keeps it in the
		// page cache, and a crash of the host discards the journal, so
		// that no record the peer holds is ever numbered again.
		if rec.Kind == journal.KindWrite && !rec.Handed() {
			buf = rec.Data[:0] // may have been grown by Next
		}
		c, err := p.s.SubmitJournal(a.journalOp(p, rec))
		if err != nil {
			a.j.Recycle(rec)
			return err
		}
		acks <- shipped{call: c, seq: rec.Seq, kind: rec.Kind, buf: buf, rec: rec, marked: rec.Seq >= p.markedLo}
		sinceFlush += journal.HeaderSize + int64(len(rec.Data))
		if sinceFlush >= a.flushEvery {
			if err := flush(); err != nil {
				return err
			}
		}
	}
}

// checkCaughtUp finishes a journal catch-up once every record it sent in
// order was acknowledged: the blocks that were out of sync only because of
// journaled writes are in sync again. a.mu is held.
func (a *asyncMirror) checkCaughtUp(p *period) {
	if p.catchFrom == 0 || p.caught || p.failed || p.acked < p.catchTo {
		return
	}
	p.caught = true
	done := a.oosJournal.Clone()
	done.AndNot(a.foreign)
	a.m.dirty.ClearOutOfSync(done)
	a.m.intent.ClearOutOfSync(done)
	a.oosJournal.Clear()
	a.m.log.Info("journal catch-up finished", "from", p.catchFrom, "to", p.catchTo, "blocks", done.GetCardinality())
	close(p.caughtUp)
}

// ackLoop waits for the acks in order, clears the bits of acknowledged
// records and passes the peer's durable position on to the truncator.
func (a *asyncMirror) ackLoop(p *period, acks <-chan shipped, trunc chan uint64, recycle chan<- []byte) error {
	var first error
	for it := range acks {
		reply, err := it.call.WaitReply()
		a.j.Recycle(it.rec)
		if it.buf != nil {
			select {
			case recycle <- it.buf:
			default:
			}
		}
		if first != nil {
			continue // the period is over; end() fails what is left
		}
		if err != nil {
			first = err
			p.cancel()
			continue
		}
		if it.seq == 0 || it.kind == journal.KindFlush {
			if id, seq, ok := transport.ParsePosition(reply); ok {
				pos := journal.Position{ID: id, Seq: seq}
				if pos.ID == a.id {
					a.mu.Lock()
					a.peerPos = pos
					a.mu.Unlock()
					select {
					case <-trunc:
					default:
					}
					trunc <- pos.Seq
				}
			}
			if it.seq == 0 {
				continue
			}
		}
		var e bitmap.Extent
		var ack bool
		a.mu.Lock()
		p.acked = it.seq
		a.acked = it.seq
		if it.marked && it.kind != journal.KindFlush {
			if e, ack = p.marks[it.seq]; ack {
				delete(p.marks, it.seq)
			} else {
				p.early[it.seq] = struct{}{}
			}
		}
		if p.ackWait != nil {
			close(p.ackWait)
			p.ackWait = nil
		}
		a.checkCaughtUp(p)
		a.mu.Unlock()
		if ack {
			a.ackExtent(e)
		}
		if a.stopped.Load() {
			a.maybeAutoResync(p)
		}
	}
	return first
}

// truncLoop frees the journal up to the peer's durable position.
func (a *asyncMirror) truncLoop(p *period, trunc <-chan uint64) {
	for {
		select {
		case seq := <-trunc:
			if err := a.j.Truncate(seq); err != nil {
				a.m.log.Warn("journal truncate failed", "seq", seq, "err", err)
			}
		case <-p.ctx.Done():
			return
		}
	}
}

// maybeAutoResync starts a bitmap resync once journaling stopped while
// connected and every journaled record was acknowledged.
func (a *asyncMirror) maybeAutoResync(p *period) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cur != p || !p.started || p.failed || p.autoResync || !a.stopped.Load() || (p.catchFrom != 0 && !p.caught) || p.acked+1 < a.j.Next() {
		return
	}
	p.autoResync = true
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.m.log.Info("journal drained after it overflowed: resyncing the blocks written meanwhile")
		err := a.m.Resync(p.ctx, false)
		a.mu.Lock()
		p.autoResync = false
		a.mu.Unlock()
		if err != nil {
			if p.ctx.Err() == nil {
				a.m.log.Warn("resync after the journal overflowed failed", "err", err)
			}
			return
		}
		if a.resynced != nil {
			a.resynced(p.ctx)
		}
	}()
}
