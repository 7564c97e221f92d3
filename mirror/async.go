package mirror

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ldmirror/ldmirror/bitmap"
	"github.com/ldmirror/ldmirror/internal/failpoint"
	"github.com/ldmirror/ldmirror/journal"
	"github.com/ldmirror/ldmirror/transport"
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
	if journaled {
		failpoint.Crash("journal-appended-before-ship") // held: not shipped yet
	}
	lerr := o.apply(m.local)
	m.localFailed(lerr)
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
	if p == nil || a.cur != p || p.failed || p.s.Err() != nil {
		// The period ended (end took its marks under mu) or another began:
		// this record was not shipped in it. Or the session broke and the
		// period is about to end: from the break on, a write waits for the
		// fence (docs/journal.md, "What a failover loses in async mode"),
		// the fence of the loss that the break begins, counted now.
		a.mu.Unlock()
		if p != nil {
			if err := p.s.Err(); err != nil {
				a.m.peerLost(p.s, err)
			}
		}
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

// flush is Mirror.Flush in async mode: a barrier record and the local
// flush, not the peer's, and not the journal's: the journal serves only
// while the host stays up (a crash of the process keeps it in the page
// cache), and after a crash of the host it is discarded (OpenJournal).
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
	return m.local.Flush()
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
