package mirror

import (
	"context"
	"errors"
	"fmt"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ldmirror/ldmirror/journal"
	"github.com/ldmirror/ldmirror/transport"
)

// errNoPosition reports a peer that does not say where it is in the journal.
var errNoPosition = errors.New("the peer reports no position in this journal")

// CatchUp brings the peer of the current session up to date: in async mode
// it replays the journal from the peer's durable position if the journal
// still holds it and nothing else differs (the peer's disk stays a prefix
// of the primary's writes throughout), else it resyncs the out-of-sync
// blocks (Resync). In sync mode it is Resync. Call it after every SetPeer.
// A resync the peer staged is committed before it returns.
func (m *Mirror) CatchUp(ctx context.Context, checksum bool) error {
	if err := m.rep.catchUp(ctx, checksum); err != nil {
		return err
	}
	if s := m.session(); s != nil {
		return m.commitPeer(ctx, s)
	}
	return nil
}

// catchUp is CatchUp in async mode.
func (a *asyncMirror) catchUp(ctx context.Context, checksum bool) error {
	m := a.m
	a.mu.Lock()
	p := a.cur
	started := p != nil && p.started
	a.mu.Unlock()
	if p == nil {
		return fmt.Errorf("catch-up: %w", transport.ErrDisconnected)
	}
	if started {
		if err := a.waitCaughtUp(ctx, p); err != nil {
			return err
		}
		return m.Resync(ctx, checksum)
	}
	call, err := p.s.SubmitFlush()
	var reply []byte
	if err == nil {
		reply, err = call.WaitReply()
	}
	if err != nil {
		m.peerLost(p.s, err)
		return fmt.Errorf("catch-up: ask the peer for its position: %w", err)
	}
	var pos journal.Position
	if id, seq, ok := transport.ParsePosition(reply); ok {
		pos = journal.Position{ID: id, Seq: seq}
	}
	oos := m.dirty.OutOfSync()
	oldest := a.j.Oldest()
	a.mu.Lock()
	if p.started || p.failed {
		a.mu.Unlock()
		return m.CatchUp(ctx, checksum)
	}
	why := a.journalUnusable(p, pos, oldest, oos)
	p.started = true
	a.peerPos = pos
	if why == nil {
		// Every record written so far goes in order; markedLo-1 at least.
		p.catchFrom, p.catchTo = pos.Seq+1, a.j.Next()-1
		p.acked, a.acked = pos.Seq, pos.Seq
		a.lastCatch, a.fallback = CatchUpJournal, ""
		a.checkCaughtUp(p) // nothing to replay
		a.mu.Unlock()
		m.log.Info("catching up from the journal", "from", p.catchFrom, "to", p.catchTo)
		p.start <- pos.Seq + 1
		return a.waitCaughtUp(ctx, p)
	}
	a.lastCatch, a.fallback = CatchUpBitmap, why.Error()
	a.acked = p.acked
	a.mu.Unlock()
	m.log.Info("catching up by bitmap resync", "reason", why)
	// The journal's records go out of order with the resync's copies from
	// the first one shipped: the peer stages them all.
	if _, err := m.ProtectPeer(ctx, p.s, true); err != nil {
		return fmt.Errorf("catch-up: %w", err)
	}
	// The records before this connection are covered by the resync.
	if err := a.j.Truncate(p.markedLo - 1); err != nil {
		m.log.Warn("journal truncate failed", "err", err)
	}
	p.start <- p.markedLo
	return m.Resync(ctx, checksum)
}

// journalUnusable says why a journal catch-up cannot bring a peer at pos up
// to date, or nil if it can. a.mu is held.
func (a *asyncMirror) journalUnusable(p *period, pos journal.Position, oldest uint64, oos *roaring.Bitmap) error {
	switch {
	case a.stopped.Load():
		return errors.New(a.overflow)
	case pos.ID != a.id && pos.ID == a.discardedID && a.discarded != "":
		return fmt.Errorf("the peer's position (seq %d) is in the journal of the previous run (%x), which was discarded: %s", pos.Seq, pos.ID, a.discarded)
	case pos.ID != a.id:
		return fmt.Errorf("%w (it has journal %x seq %d, this is %x)", errNoPosition, pos.ID, pos.Seq, a.id)
	case a.authority == journal.NoAuthority:
		return fmt.Errorf("no peer may catch up from this journal before a bitmap resync: %s", a.authorityWhy)
	case pos.Seq < a.authority:
		return fmt.Errorf("the peer's position %d predates the last bitmap resync (%d)", pos.Seq, a.authority)
	case pos.Seq+1 < oldest:
		return fmt.Errorf("the journal no longer holds seq %d (oldest %d)", pos.Seq+1, oldest)
	case pos.Seq >= p.markedLo:
		return fmt.Errorf("the peer's position %d is past the journal's %d", pos.Seq, p.markedLo-1)
	}
	extra := oos.Clone()
	extra.AndNot(a.oosJournal)
	if n := extra.GetCardinality(); n > 0 {
		return fmt.Errorf("%d blocks are out of sync for reasons the journal does not cover", n)
	}
	if oos.Intersects(a.foreign) {
		return errors.New("blocks are out of sync for reasons the journal does not cover")
	}
	return nil
}

func (a *asyncMirror) waitCaughtUp(ctx context.Context, p *period) error {
	a.mu.Lock()
	catching := p.catchFrom != 0
	a.mu.Unlock()
	if !catching {
		return nil
	}
	select {
	case <-p.caughtUp:
		return nil
	case <-p.done:
		return fmt.Errorf("journal catch-up: %w", transport.ErrDisconnected)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Drain waits until the peer acknowledged every record journaled before
// the call (async mode; in sync mode it returns at once).
func (m *Mirror) Drain(ctx context.Context) error { return m.rep.drain(ctx) }

// drain is Drain in async mode.
func (a *asyncMirror) drain(ctx context.Context) error {
	target := a.j.Next() - 1
	for {
		a.mu.Lock()
		p := a.cur
		if p == nil || p.failed {
			a.mu.Unlock()
			return fmt.Errorf("drain: %w", transport.ErrDisconnected)
		}
		if !p.started {
			a.mu.Unlock()
			return fmt.Errorf("%w: drain before CatchUp", ErrAsync)
		}
		if p.acked >= target {
			a.mu.Unlock()
			return nil
		}
		if p.ackWait == nil {
			p.ackWait = make(chan struct{})
		}
		ch := p.ackWait
		a.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// beginResync prepares a bitmap resync in async mode: shipping must run,
// every record journaled so far must be acknowledged first (a record
// shipped after the resync copied its block would bring back older data if
// an unjournaled write followed it), and from here on every write is
// journaled, throttled if the journal fills. The journal loses its
// authority, durably, before the first block is sent (the peer is not
// consistent until the resync ends); if journaling had stopped, its
// records are dropped (journal.Resume). The returned func ends it: after a
// successful resync, the barrier it appends becomes the authority, unless
// blocks went out of sync meanwhile for reasons the journal does not cover.
func (a *asyncMirror) beginResync(ctx context.Context) (func(error), error) {
	a.mu.Lock()
	p := a.cur
	if p != nil && !p.started {
		// A resync without CatchUp: ship from this connection on.
		p.started = true
		a.lastCatch = CatchUpBitmap
		a.mu.Unlock()
		if _, err := a.m.ProtectPeer(ctx, p.s, true); err != nil {
			return nil, fmt.Errorf("resync: %w", err)
		}
		if err := a.j.Truncate(p.markedLo - 1); err != nil {
			a.m.log.Warn("journal truncate failed", "err", err)
		}
		p.start <- p.markedLo
	} else {
		a.mu.Unlock()
	}
	if err := a.m.Drain(ctx); err != nil {
		return nil, fmt.Errorf("resync: %w", err)
	}
	a.rw.Lock()
	if a.broken != nil {
		err := a.broken
		a.rw.Unlock()
		return nil, fmt.Errorf("resync: %w", err)
	}
	a.authMu.Lock()
	var err error
	if a.stopped.Load() {
		// Every record was acknowledged (Drain) and the resync covers
		// the unjournaled writes: the records are of no more use, and
		// must never be redone over those writes.
		err = a.j.Resume()
	}
	why := "a bitmap resync started and has not completed"
	if err == nil {
		err = a.j.SetAuthority(journal.NoAuthority, why)
	}
	gen := a.foreignGen
	a.mu.Lock()
	a.authority, a.authorityWhy = journal.NoAuthority, why
	a.mu.Unlock()
	a.authMu.Unlock()
	if err != nil {
		a.rw.Unlock()
		return nil, fmt.Errorf("resync: journal: %w", err)
	}
	a.stopped.Store(false)
	a.resyncActive++
	a.rw.Unlock()
	return func(err error) {
		if err == nil {
			a.endResync(gen)
		}
		a.rw.Lock()
		a.resyncActive--
		a.rw.Unlock()
	}, nil
}

// endResync gives the journal its authority back after a bitmap resync
// that began at foreignGen gen completed.
func (a *asyncMirror) endResync(gen uint64) {
	// A barrier record after every resync copy: the peer learns this
	// journal and a position from which a catch-up can replay.
	a.rw.RLock()
	authority := a.j.Next() - 1
	var jerr error
	if !a.stopped.Load() && a.broken == nil {
		_, jerr = a.append(a.cur, journal.Record{Kind: journal.KindFlush}, false)
	}
	a.rw.RUnlock()
	if jerr != nil {
		a.stopJournal(jerr)
	}
	oos := a.m.dirty.OutOfSync()
	a.authMu.Lock()
	defer a.authMu.Unlock()
	a.mu.Lock()
	oos.AndNot(a.oosJournal)
	covered := a.foreignGen == gen && oos.IsEmpty() && a.foreign.IsEmpty() && !a.stopped.Load()
	if !a.stopped.Load() {
		a.overflow = ""
	}
	a.mu.Unlock()
	if !covered {
		return
	}
	if err := a.j.SetAuthority(authority, ""); err != nil {
		a.m.log.Warn("the journal's authority could not be recorded: the next catch-up resyncs by bitmap", "err", err)
		return
	}
	a.mu.Lock()
	a.authority, a.authorityWhy = authority, ""
	a.mu.Unlock()
}

// cleared forgets blocks a resync copied.
func (a *asyncMirror) cleared(done *roaring.Bitmap) {
	a.mu.Lock()
	a.oosJournal.AndNot(done)
	a.foreign.AndNot(done)
	a.mu.Unlock()
}
