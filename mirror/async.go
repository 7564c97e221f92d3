package mirror

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ldmirror/ldmirror/bitmap"
	"github.com/ldmirror/ldmirror/journal"
	"github.com/ldmirror/ldmirror/transport"
)

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

// StateCatchUp is the replication state while the journal is replayed to a
// peer that returned.
const StateCatchUp = "journal-catchup"

// How the last reconnect brought the peer up to date (Status.LastCatchUp).
const (
	CatchUpJournal = "journal"
	CatchUpBitmap  = "bitmap"
)

// AsyncConfig is async mode (Config.Async).
type AsyncConfig struct {
	// Journal is the open journal; the Mirror closes it in Close.
	Journal *journal.Journal
	// OnFull is what to do when the journal is full while connected.
	OnFull FullPolicy
	// FlushEvery: after this many journal bytes shipped, the Mirror asks
	// the peer to flush, learns its durable position and truncates the
	// journal up to it. Default: an eighth of the journal.
	FlushEvery int64
	// IdleFlush: when shipping goes idle with records the peer has not
	// reported durable, ask after this long (default 20 ms).
	IdleFlush time.Duration
	// Resynced, if set, is called after the Mirror resynced the peer on its
	// own (FallBackToLogging while connected): the peer holds every write
	// again. The fence, if any, may have marked it outdated meanwhile. ctx
	// ends with the connection.
	Resynced func(ctx context.Context)
	// Discarded, if set, is why the journal of the previous run was not
	// resumed (JournalStart.Discarded), and DiscardedID its identity: a
	// peer with a position in it is told so at catch-up.
	Discarded   string
	DiscardedID uint64
}

// ErrAsync reports a misuse of async mode.
var ErrAsync = errors.New("async mode")

// asyncMirror is the Mirror's async state.
type asyncMirror struct {
	m          *Mirror
	j          *journal.Journal
	id         uint64
	policy     FullPolicy
	flushEvery int64
	idleFlush  time.Duration
	resynced   func(context.Context)

	// rw orders writers against changes of how a write is logged: a
	// writer holds it shared while it reads the state and appends; a
	// change takes it exclusively.
	rw           sync.RWMutex
	stopped      atomic.Bool // journaling stopped (overflow) until a bitmap resync; written under rw
	broken       error       // the stop could not be made durable: writes fail; under rw
	resyncActive int         // bitmap resyncs running: a full journal then throttles; under rw

	// authMu serializes changes of the authority (in the journal and
	// here) with foreignGen, which counts the events that put blocks out
	// of sync for reasons the journal does not cover. Order: rw, authMu, mu.
	authMu     sync.Mutex
	foreignGen uint64

	setMu sync.Mutex // one SetPeer at a time

	mu           sync.Mutex
	cur          *period         // the connected period; written under rw and mu
	oosJournal   *roaring.Bitmap // out of sync only because of journaled writes the peer has not acked
	foreign      *roaring.Bitmap // out of sync for other reasons this Mirror knows of
	authority    uint64          // a journal catch-up needs the peer at or past this seq (journal.NoAuthority: none may); under authMu and mu
	authorityWhy string          // why there is no authority
	acked        uint64          // last record the peer acknowledged
	peerPos      journal.Position
	overflow     string // why journaling stopped; "" when it runs
	fallback     string // why the last catch-up was a bitmap resync
	lastCatch    string
	discardedID  uint64 // the journal of the previous run, not resumed
	discarded    string // why

	wg sync.WaitGroup // period goroutines
}

// period is one connection to the peer in async mode.
type period struct {
	s        *transport.Session
	ctx      context.Context
	cancel   context.CancelFunc
	markedLo uint64      // first record of this period: its bits stay in flight until acked
	start    chan uint64 // where shipping starts (CatchUp decides)
	done     chan struct{}

	// guarded by asyncMirror.mu
	started    bool
	failed     bool
	acked      uint64                   // last record acked in order
	marks      map[uint64]bitmap.Extent // records of this period whose bits await the ack
	early      map[uint64]struct{}      // acked before their writer registered them
	catchFrom  uint64                   // first record of a journal catch-up; 0: none
	catchTo    uint64                   // its last: the head when it started (sent in order)
	caughtUp   chan struct{}
	caught     bool
	ackWait    chan struct{} // closed when acked advances; nil without a waiter
	autoResync bool
}

// startAsync puts a new Mirror in async mode with cfg.Journal (see
// OpenJournal); the dirty set holds what the write intent log recovered.
// From then on a write returns once it is appended to the journal and
// written locally; a shipper sends the journal to the peer in order and
// clears a write's dirty bits when the peer acknowledged it. After SetPeer,
// CatchUp must run: shipping starts only then, and with the Throttle
// policy writers wait for it once the journal is full.
//
// If the journal has an authority (a resumed one, after a bitmap resync
// completed in it), every block out of sync now is covered by its records
// after the authority (docs/journal.md), so a peer at or past it catches
// up from the journal; otherwise they are resynced by bitmap.
func (m *Mirror) startAsync(cfg AsyncConfig) {
	a := &asyncMirror{
		m:          m,
		j:          cfg.Journal,
		id:         cfg.Journal.ID(),
		policy:     cfg.OnFull,
		flushEvery: cfg.FlushEvery,
		idleFlush:  cfg.IdleFlush,
		resynced:   cfg.Resynced,
		oosJournal: roaring.New(),
		foreign:    roaring.New(),
	}
	if a.flushEvery <= 0 {
		a.flushEvery = cfg.Journal.Capacity() / 8
	}
	if a.idleFlush <= 0 {
		a.idleFlush = 20 * time.Millisecond
	}
	a.authority, a.authorityWhy = cfg.Journal.Authority()
	if stopped, why := cfg.Journal.Stopped(); stopped {
		a.stopped.Store(true)
		a.overflow = "journal stopped: " + why
	}
	oos := m.dirty.OutOfSync()
	if a.authority == journal.NoAuthority {
		a.foreign.Or(oos)
	} else {
		a.oosJournal.Or(oos)
	}
	a.discardedID, a.discarded = cfg.DiscardedID, cfg.Discarded
	if cfg.Discarded != "" {
		a.fallback = "the journal of the previous run was discarded: " + cfg.Discarded
	}
	m.intent = asyncIntent{WriteIntent: m.intent, a: a}
	m.rep = a
}

// asyncIntent is the write intent log in async mode: blocks marked out of
// sync through it (by Verify) are not covered by the journal, so the
// journal gives up its authority, durably, before they are recorded.
type asyncIntent struct {
	WriteIntent
	a *asyncMirror
}

func (w asyncIntent) MarkOutOfSync(blocks *roaring.Bitmap) {
	w.a.markForeign(blocks, "blocks were found to differ from the peer")
	w.WriteIntent.MarkOutOfSync(blocks)
}

// MarkOutOfSync marks blocks out of sync, in memory and in the write
// intent log, for a reason that the writes do not explain (why: a full
// resync, the peer's own writes as primary). In async mode no peer may be
// caught up from the journal until a bitmap resync copied them, and that
// is made durable first.
func (m *Mirror) MarkOutOfSync(blocks *roaring.Bitmap, why string) error {
	if err := m.rep.markForeign(blocks, why); err != nil {
		return err
	}
	m.dirty.MarkOutOfSync(blocks)
	m.intent.MarkOutOfSync(blocks)
	return nil
}

// markForeign records blocks as out of sync for a reason the journal does
// not cover (see foreignEvent).
func (a *asyncMirror) markForeign(blocks *roaring.Bitmap, why string) error {
	err := a.foreignEvent(why)
	a.mu.Lock()
	a.foreign.Or(blocks)
	a.mu.Unlock()
	return err
}

// foreignEvent takes the journal's authority away, durably, because blocks
// are about to go out of sync for a reason the journal does not cover:
// after a restart, blocks the write intent log recovers count as covered
// by the journal only while it has an authority. A bitmap resync that
// began before the event does not give it back.
func (a *asyncMirror) foreignEvent(why string) error {
	a.authMu.Lock()
	defer a.authMu.Unlock()
	a.foreignGen++
	a.mu.Lock()
	had := a.authority != journal.NoAuthority
	a.authority, a.authorityWhy = journal.NoAuthority, why
	a.mu.Unlock()
	if !had {
		return nil
	}
	if err := a.j.SetAuthority(journal.NoAuthority, why); err != nil && !errors.Is(err, journal.ErrClosed) {
		a.m.log.Error("the journal's authority could not be taken back: a restart may replay it over blocks it does not cover", "err", err)
		return fmt.Errorf("journal: %w", err)
	}
	return nil
}

// replicate is claim 17 in async mode: mark, append to the journal, write
// locally; the bits stay in flight until the shipper sees the peer's ack.
//
// The append comes first, and both happen under the write's range lock, so
// that every change to the local disk is a record of the journal, in the
// same order for any block: after a crash of this process the journal's
// records, redone onto the local disk (OpenJournal), give it every write
// whose append returned, and a journal catch-up can bring a peer to the
// same state. The record is held (journal.AppendHeld) until the local write
// ended: it is neither shipped nor truncated before. rw is not held during
// the local write, so that a slow disk does not hold up the link's state
// changes; register checks that the period is still the one appended in.
func (a *asyncMirror) replicate(o op, e bitmap.Extent) error {
	m := a.m
	rec := journal.Record{Kind: journal.KindWrite, Offset: o.off, Length: o.n, Data: o.data}
	if o.data == nil {
		rec.Kind = journal.KindTrim
	}
	var p *period
	var seq uint64
	journaled := false
	a.rw.RLock()
	for !a.stopped.Load() {
		if a.broken != nil {
			err := a.broken
			a.rw.RUnlock()
			a.fail(e, false, "journaling stopped and that could not be recorded")
			return err
		}
		p = a.cur
		var err error
		if seq, err = a.append(p, rec, true); err == nil {
			journaled = true
			break
		}
		a.rw.RUnlock()
		a.stopJournal(err)
		a.rw.RLock()
	}
	a.rw.RUnlock()
	lerr := o.apply(m.local)
	if !journaled {
		// Journaling stopped, durably, before this write: a restart will
		// not redo the journal over it.
		a.fail(e, false, "")
		if lerr != nil {
			return lerr
		}
		return m.ensureFenced(m.lossCount())
	}
	if lerr != nil {
		// The record ships (its ack, if any, ends in p.early): the peer gets
		// the data, this disk not. The bitmap resync that the foreign block
		// calls for copies this disk's blocks over it.
		a.fail(e, false, "a local write failed")
		a.j.Release(seq)
		return lerr
	}
	// Registered before the release: the record cannot be acknowledged
	// before. Not under rw: a writer waiting for room in the journal holds
	// it shared, and a change waiting for it exclusively would make this
	// writer wait behind it, and the room never come.
	if a.register(p, seq, e) {
		a.j.Release(seq)
		return nil
	}
	// Journaled but not shipped now: it reaches the peer at catch-up. Its
	// blocks are marked before the release, so that a catch-up that
	// replays the record also finds them to clear.
	a.fail(e, true, "")
	a.j.Release(seq)
	return m.ensureFenced(m.lossCount())
}

// append appends rec, held if hold (see replicate); rw is held shared.
// While connected it waits for room if the policy (or a running resync)
// says throttle: the room comes once CatchUp started shipping.
func (a *asyncMirror) append(p *period, rec journal.Record, hold bool) (uint64, error) {
	wait := p != nil && (a.policy == Throttle || a.resyncActive > 0)
	switch {
	case wait && hold:
		return a.j.AppendHeld(p.ctx, rec)
	case wait:
		return a.j.Append(p.ctx, rec)
	case hold:
		return a.j.TryAppendHeld(rec)
	}
	return a.j.TryAppend(rec)
}

// register records that seq's bits wait for its ack in period p.
func (a *asyncMirror) register(p *period, seq uint64, e bitmap.Extent) bool {
	a.mu.Lock()
	if p == nil || a.cur != p || p.failed {
		// The period ended (end took its marks under mu) or another began:
		// this record was not shipped in it.
		a.mu.Unlock()
		return false
	}
	_, early := p.early[seq]
	if early {
		delete(p.early, seq)
	} else {
		p.marks[seq] = e
	}
	a.mu.Unlock()
	if early {
		a.ackExtent(e)
	}
	return true
}

func (a *asyncMirror) ackExtent(e bitmap.Extent) {
	a.m.dirty.Ack(e)
	a.m.intent.EndWrite(e, true)
}

// fail makes e's blocks out of sync: because of a journaled write the peer
// did not get (journaled), or for a reason the journal does not cover
// (why), which first takes the journal's authority away (foreignEvent).
func (a *asyncMirror) fail(e bitmap.Extent, journaled bool, why string) {
	if !journaled {
		_ = a.foreignEvent(cmp.Or(why, "a write was not journaled"))
	}
	a.m.dirty.Fail(e)
	a.mu.Lock()
	if journaled {
		a.oosJournal.AddRange(uint64(e.First), uint64(e.Last)+1)
	} else {
		a.foreign.AddRange(uint64(e.First), uint64(e.Last)+1)
	}
	a.mu.Unlock()
	a.m.intent.EndWrite(e, false)
}

// stopJournal stops journaling after an append failed: from now on writes
// are tracked in the bitmap only, until a bitmap resync. The stop is
// recorded in the journal (journal.Stop) before any write goes on
// unjournaled: a restart must never redo the records over such a write. If
// it cannot be, writes fail from now on.
func (a *asyncMirror) stopJournal(cause error) {
	a.rw.Lock()
	if a.stopped.Load() || a.broken != nil {
		a.rw.Unlock()
		return
	}
	p := a.cur
	reason := "journal overflowed while disconnected: bitmap resync on reconnect"
	switch {
	case !errors.Is(cause, journal.ErrFull):
		reason = "journal failed (" + cause.Error() + "): bitmap resync"
	case p != nil && a.policy == FallBackToLogging:
		reason = "journal full (on-full policy logging): bitmap resync once it drained"
	case p != nil:
		reason = "journal full while the link went down: bitmap resync on reconnect"
	}
	a.authMu.Lock()
	err := a.j.Stop(reason)
	a.foreignGen++
	a.mu.Lock()
	a.authority, a.authorityWhy = journal.NoAuthority, reason
	a.overflow = reason
	a.mu.Unlock()
	a.authMu.Unlock()
	if err != nil && !errors.Is(err, journal.ErrClosed) {
		a.broken = fmt.Errorf("journal stopped (%s) and that could not be recorded: %w", reason, err)
		a.rw.Unlock()
		a.m.log.Error("journal stopped and that could not be recorded: writes fail", "reason", reason, "err", err)
		return
	}
	a.stopped.Store(true)
	a.rw.Unlock()
	a.m.log.Warn("journal stopped: writes are tracked in the dirty bitmap", "reason", reason, "err", cause)
	if p != nil {
		a.maybeAutoResync(p)
	}
}

// flush is Mirror.Flush in async mode: a barrier record, the local flush
// and the journal's, not the peer's.
func (a *asyncMirror) flush() error {
	m := a.m
	var err error
	a.rw.RLock()
	if !a.stopped.Load() && a.broken == nil {
		_, err = a.append(a.cur, journal.Record{Kind: journal.KindFlush}, false)
	}
	a.rw.RUnlock()
	if err != nil {
		a.stopJournal(err)
	}
	lerr := m.local.Flush()
	if err := a.j.Sync(m.closing); err != nil && !errors.Is(err, context.Canceled) {
		// The data is durable here; the peer will need a bitmap resync.
		a.stopJournal(err)
	}
	return lerr
}

// setPeer ends the current period and starts one with s (if not nil).
func (a *asyncMirror) setPeer(s *transport.Session) {
	a.setMu.Lock()
	defer a.setMu.Unlock()
	a.mu.Lock()
	old := a.cur
	a.mu.Unlock()
	if old != nil {
		old.cancel()
		<-old.done
	}
	if s == nil {
		return
	}
	ctx, cancel := context.WithCancel(a.m.closing)
	p := &period{
		s: s, ctx: ctx, cancel: cancel,
		start:    make(chan uint64, 1),
		done:     make(chan struct{}),
		marks:    make(map[uint64]bitmap.Extent),
		early:    make(map[uint64]struct{}),
		caughtUp: make(chan struct{}),
	}
	a.rw.Lock()
	a.mu.Lock()
	p.markedLo = a.j.Next()
	p.acked = p.markedLo - 1
	a.cur = p
	a.mu.Unlock()
	a.rw.Unlock()
	a.wg.Add(1)
	go a.run(p)
}

// close ends shipping before the Mirror closes the journal. The local disk
// is flushed first: a journal closed cleanly is trusted after a reboot of
// the host, so what it and the local disk hold must be durable by then.
func (a *asyncMirror) close() error {
	a.setPeer(nil)
	a.wg.Wait()
	if err := a.m.local.Flush(); err != nil {
		return errors.Join(fmt.Errorf("flush the local disk: %w", err),
			a.j.SetAuthority(journal.NoAuthority, "the local disk failed to flush when the daemon stopped"), a.j.Close())
	}
	return a.j.Close()
}

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
	buf    []byte // to recycle once acked
	marked bool
}

// ship sends records from seq from on, in order, until the period ends.
func (a *asyncMirror) ship(p *period, from uint64) error {
	cur, err := a.j.NewCursor(from)
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	acks := make(chan shipped, 256)
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
		if rec.Seq > a.j.Durable() {
			// Only durable records leave: the peer never holds a record
			// that a crash here could take back and number again.
			if err := a.j.Sync(p.ctx); err != nil {
				return err
			}
		}
		op := transport.JournalOp{ID: a.id, Seq: rec.Seq, Offset: rec.Offset, Data: rec.Data}
		switch rec.Kind {
		case journal.KindWrite:
			op.Kind = transport.KindWrite
			buf = rec.Data[:0] // may have been grown by Next
		case journal.KindTrim:
			op.Kind, op.Length = transport.KindTrim, rec.Length
		case journal.KindFlush:
			op.Kind = transport.KindFlush
		}
		// The catch-up's records go one at a time (catchTo is set before
		// shipping starts); later ones are live writes with their barriers.
		op.Ordered = rec.Seq <= p.catchTo && p.catchFrom != 0
		c, err := p.s.SubmitJournal(op)
		if err != nil {
			return err
		}
		acks <- shipped{call: c, seq: rec.Seq, kind: rec.Kind, buf: buf, marked: rec.Seq >= p.markedLo}
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
			if len(reply) == 16 {
				pos := journal.Position{ID: binary.BigEndian.Uint64(reply), Seq: binary.BigEndian.Uint64(reply[8:])}
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

// errNoPosition reports a peer that does not say where it is in the journal.
var errNoPosition = errors.New("the peer reports no position in this journal")

// CatchUp brings the peer of the current session up to date: in async mode
// it replays the journal from the peer's durable position if the journal
// still holds it and nothing else differs (the peer's disk stays a prefix
// of the primary's writes throughout), else it resyncs the out-of-sync
// blocks (Resync). In sync mode it is Resync. Call it after every SetPeer.
func (m *Mirror) CatchUp(ctx context.Context, checksum bool) error {
	return m.rep.catchUp(ctx, checksum)
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
	if len(reply) == 16 {
		pos = journal.Position{ID: binary.BigEndian.Uint64(reply), Seq: binary.BigEndian.Uint64(reply[8:])}
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

// status fills the async fields of st.
func (a *asyncMirror) status(st *Status) {
	js := a.j.Stats()
	st.Mode = ModeAsync.String()
	st.OnFull = a.policy.String()
	st.JournalUsed, st.JournalCapacity = js.Used, js.Capacity
	st.JournalOldest, st.JournalNewest = js.Oldest, js.Next-1
	st.Throttled = js.Waiting
	a.mu.Lock()
	defer a.mu.Unlock()
	st.JournalAcked = a.acked
	st.PeerDurable = a.peerPos.Seq
	if js.Next-1 > a.acked {
		st.JournalLag = js.Next - 1 - a.acked
	}
	st.JournalOverflow = a.stopped.Load()
	st.FallbackReason = a.overflow
	if st.FallbackReason == "" {
		st.FallbackReason = a.fallback
	}
	st.LastCatchUp = a.lastCatch
	if p := a.cur; p != nil && p.catchFrom != 0 && !p.caught {
		st.CatchingUp = true
		st.CatchUpFrom, st.CatchUpTo = p.catchFrom, p.catchTo
	}
	switch {
	case !st.Connected:
	case st.CatchingUp:
		st.Replication = StateCatchUp
	case st.Replication == StateResyncing:
	case st.JournalOverflow:
		st.Replication = StateLogging
	}
}
