package mirror

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/ldmirror/ldmirror/blockdev"
	"github.com/ldmirror/ldmirror/internal/failpoint"
	"github.com/ldmirror/ldmirror/resync"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ldmirror/ldmirror/bitmap"
	"github.com/ldmirror/ldmirror/transport"
)

// State is the replication state status shows.
type State string

// Replication states of a primary's mirror.
const (
	// StateReplicating: every write reaches the peer (or its journal
	// ships in order).
	StateReplicating State = "replicating"
	// StateLogging: no peer (or the journal overflowed): writes go on and
	// their blocks stay dirty.
	StateLogging State = "logging"
	// StateResyncing: the out-of-sync blocks are being copied to the peer.
	StateResyncing State = "resyncing"
	// StateCatchUp: the journal is replayed to a peer that returned.
	StateCatchUp State = "journal-catchup"
)

// noIntent is the write intent of a mirror that keeps the dirty blocks in
// memory only (tests, and the passthrough baseline).
type noIntent struct{}

func (noIntent) BeginWrite(context.Context, bitmap.Extent) error { return nil }
func (noIntent) EndWrite(bitmap.Extent, bool)                    {}
func (noIntent) ClearOutOfSync(*roaring.Bitmap)                  {}
func (noIntent) MarkOutOfSync(*roaring.Bitmap)                   {}
func (noIntent) Sync(context.Context) error                      { return nil }

// WriteIntent is the durable record of the blocks that may differ on the
// peer (the scoreboard with its activity log). The Mirror announces every
// write before it is issued and reports how it ended.
type WriteIntent interface {
	// BeginWrite returns once a crash from now on would count e's blocks as
	// possibly different; on error the write must not be issued.
	BeginWrite(ctx context.Context, e bitmap.Extent) error
	// EndWrite reports that the write of e ended, on both hosts (inSync) or not.
	EndWrite(e bitmap.Extent, inSync bool)
	// ClearOutOfSync forgets blocks a resync copied.
	ClearOutOfSync(blocks *roaring.Bitmap)
	// MarkOutOfSync records blocks found to differ (by verify).
	MarkOutOfSync(blocks *roaring.Bitmap)
	// Sync makes the out-of-sync changes so far durable: a resync calls it
	// as it goes, so an interrupted resync resumes where it was.
	Sync(ctx context.Context) error
}

// Mirror is the primary's view of the volume: a blockdev.Device whose writes are
// mirrored to the peer through a transport.Session, in sync mode or, after
// Config.Async, in async mode through a journal. Without a peer it keeps
// serving and leaves the blocks it writes dirty.
type Mirror struct {
	local blockdev.Device
	// disk latches the local disk's first write error: from then on every
	// write fails before it is shipped (docs/operations.md, "A failing
	// disk").
	disk   *blockdev.Failure
	dirty  *bitmap.Set
	intent WriteIntent // nil: dirty blocks are known in memory only
	locks  *rangeLock
	log    *slog.Logger
	rep    replicator // sync, or the async journal; set by New

	resyncMu sync.Mutex // one Resync at a time

	mu        sync.Mutex
	link      *link  // the current peer session, or none (fence.go)
	losses    uint64 // peer losses so far; starting without a peer is the first
	resyncing bool
	closed    bool
	lastErr   string
	inflight  sync.WaitGroup

	// totals of sessions that ended; the live session adds its own
	past transport.SessionStats

	progress   resync.Progress
	resyncRate atomic.Int64 // bytes per second; 0: unlimited
	// resyncMinRate is the rate a resync yields to while the application
	// writes (0: never yield); appIO counts application writes.
	resyncMinRate atomic.Int64
	appIO         atomic.Uint64

	fence      Fence
	markTarget ResyncStart
	stagePeer  bool       // ask the peer to stage resyncs (stage.go)
	stage      peerStage  // what the peer said of its staging area; guarded by mu
	fenceMu    sync.Mutex // one control-plane commit at a time; writes that need a fence wait here
	fencedLoss uint64     // the last peer loss the control plane committed "peer outdated" for
	fenceErr   error      // permanent: this host may not write
	suspended  atomic.Bool
	refused    atomic.Bool // fenceErr is set
	// unflushed counts the writes the peer acknowledged that no flush of
	// its own has covered yet: what a flush vouches for on the peer.
	unflushed atomic.Int64
	closing   context.Context
	stop      context.CancelFunc
}

// Config is how a Mirror runs. New checks it once; only the resync rates
// change later (SetResyncRates).
type Config struct {
	// Dirty is the set of blocks that may differ on the peer (required),
	// holding at start what the write intent log recovered.
	Dirty *bitmap.Set
	// Intent records durably the blocks that may differ (the scoreboard
	// with its activity log); nil keeps them in memory only.
	Intent WriteIntent
	// Fence commits "peer outdated" before a write the peer lacks is
	// acknowledged; nil (no control plane) acknowledges it at once, with
	// no protection against two primaries.
	Fence Fence
	// ResyncStart records the peer inconsistent before a resync's first
	// block, or outdated if the peer stages the resync.
	ResyncStart ResyncStart
	// StagePeer asks the peer to stage every bitmap resync, so that its
	// volume stays consistent until the resync completes (stage.go); the
	// peer must handle transport Stage requests.
	StagePeer bool
	// ResyncRate and ResyncMinRate: see SetResyncRates.
	ResyncRate, ResyncMinRate int64
	// Async, if not nil, is async mode (see AsyncConfig); nil is sync mode.
	Async *AsyncConfig
	Log   *slog.Logger
}

// ErrConfig reports a Config New refuses.
var ErrConfig = errors.New("mirror config")

// New returns a Mirror over local, without a peer yet (SetPeer).
func New(local blockdev.Device, cfg Config) (*Mirror, error) {
	switch {
	case cfg.Dirty == nil:
		return nil, fmt.Errorf("%w: no dirty set", ErrConfig)
	case uint64(local.Size()) > cfg.Dirty.Blocks()*uint64(cfg.Dirty.BlockSize()):
		return nil, fmt.Errorf("%w: the dirty set covers %d blocks of %d bytes, the device is %d bytes",
			ErrConfig, cfg.Dirty.Blocks(), cfg.Dirty.BlockSize(), local.Size())
	case cfg.ResyncRate < 0 || cfg.ResyncMinRate < 0:
		return nil, fmt.Errorf("%w: resync rates %d and %d bytes/s: must not be negative", ErrConfig, cfg.ResyncRate, cfg.ResyncMinRate)
	case cfg.Async != nil && cfg.Async.Journal == nil:
		return nil, fmt.Errorf("%w: async mode without a journal", ErrConfig)
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Intent == nil {
		cfg.Intent = noIntent{}
	}
	closing, stop := context.WithCancel(context.Background())
	m := &Mirror{local: local, disk: blockdev.NewFailure(), dirty: cfg.Dirty, intent: cfg.Intent, locks: newRangeLock(), log: cfg.Log,
		fence: cfg.Fence, markTarget: cfg.ResyncStart, stagePeer: cfg.StagePeer, closing: closing, stop: stop, link: &link{}, losses: 1}
	m.SetResyncRates(cfg.ResyncRate, cfg.ResyncMinRate)
	m.rep = syncReplicator{m}
	if cfg.Async != nil {
		m.startAsync(*cfg.Async)
	}
	return m, nil
}

// SetResyncRates limits resync traffic to rate bytes per second (0: no
// limit), so that application writes keep most of the link, and makes a
// resync slow down to minRate while the application writes (0: never).
// It applies at once, to a running resync too.
func (m *Mirror) SetResyncRates(rate, minRate int64) {
	m.resyncRate.Store(rate)
	m.resyncMinRate.Store(minRate)
}

// begin registers an I/O so that Close waits for it.
func (m *Mirror) begin() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return false
	}
	m.inflight.Add(1)
	return true
}

// ReadAt reads the local copy.
func (m *Mirror) ReadAt(p []byte, off int64) (int, error) { return m.local.ReadAt(p, off) }

// Size is the volume size in bytes.
func (m *Mirror) Size() int64 { return m.local.Size() }

// WriteAt writes p at off on both hosts and returns when the local write
// completed and the peer acknowledged it (or the peer is gone, in which case
// the blocks stay dirty). In async mode it returns once the local write
// completed and the write is in the journal; its blocks stay dirty until
// the peer acknowledged it.
func (m *Mirror) WriteAt(p []byte, off int64) (int, error) {
	if err := blockdev.CheckRange(off, int64(len(p)), m.local.Size()); err != nil {
		return 0, err
	}
	m.appIO.Add(1)
	for done := 0; done < len(p); {
		chunk := p[done:min(len(p), done+transport.MaxWrite)]
		if err := m.write(op{off: off + int64(done), n: int64(len(chunk)), data: chunk}); err != nil {
			return done, err
		}
		done += len(chunk)
	}
	return len(p), nil
}

// Trim discards n bytes at off on both hosts.
func (m *Mirror) Trim(off, n int64) error {
	if err := blockdev.CheckRange(off, n, m.local.Size()); err != nil {
		return err
	}
	m.appIO.Add(1)
	if n == 0 {
		return nil
	}
	return m.write(op{off: off, n: n})
}

// op is one write (data) or trim (no data) of the application.
type op struct {
	off, n int64
	data   []byte
}

// apply runs o on dev.
func (o op) apply(dev blockdev.Device) error {
	if o.data == nil {
		return dev.Trim(o.off, o.n)
	}
	_, err := dev.WriteAt(o.data, o.off)
	return err
}

// submit sends o to the peer of s.
func (o op) submit(s *transport.Session) (*transport.Call, error) {
	if o.data == nil {
		return s.SubmitTrim(o.off, o.n)
	}
	return s.SubmitWrite(o.off, o.data)
}

// write is the write path (docs/design.md) common to both modes: the
// blocks of o are locked against overlapping writes, announced to the
// write intent log and marked dirty before the replicator ships o and
// applies it locally (docs/invariants.md, invariant 2).
func (m *Mirror) write(o op) error {
	if !m.begin() {
		return blockdev.ErrClosed
	}
	defer m.inflight.Done()
	if err := m.disk.Err(); err != nil {
		return err
	}
	e := m.dirty.ExtentOf(o.off, o.n)
	m.locks.lock(e)
	defer m.locks.unlock(e)
	// Background: the activity log always drains as writes end, and Close
	// waits for this write rather than cancelling it.
	if err := m.intent.BeginWrite(context.Background(), e); err != nil {
		return fmt.Errorf("activity log: %w", err)
	}
	m.dirty.Mark(e)
	return m.rep.replicate(o, e)
}

// syncReplicator is sync mode: a write returns once the peer acknowledged
// it, or once the peer counts as outdated.
type syncReplicator struct{ m *Mirror }

// replicate ships o and applies it locally at once, waits for the ack,
// then clears (or keeps) the bits of e.
func (r syncReplicator) replicate(o op, e bitmap.Extent) error {
	m := r.m
	l, s := m.joinLink()
	if failpoint.Reached("mirror-written-before-send") {
		_ = o.apply(m.local) // o is on this disk, and never reaches the peer
		failpoint.Kill("mirror-written-before-send")
	}
	var call *transport.Call
	if s != nil {
		c, err := o.submit(s)
		if err != nil {
			m.peerLost(s, err)
		} else {
			call = c
		}
	}
	lerr := o.apply(m.local)
	m.localFailed(lerr)
	shipped := false
	if call != nil {
		if err := call.Wait(); err != nil {
			m.peerLost(s, err)
		} else {
			shipped = true
		}
	}
	inSync := shipped && lerr == nil
	if inSync {
		failpoint.Crash("mirror-acked-before-clear")
		m.dirty.Ack(e)
		m.unflushed.Add(1)
	} else {
		m.dirty.Fail(e)
	}
	m.intent.EndWrite(e, inSync)
	loss := m.lossCount()
	l.io.Done()
	if !inSync && lerr == nil {
		return m.ensureFenced(loss)
	}
	return lerr
}

// Flush makes every earlier acknowledged write durable on both hosts: the
// peer gets a barrier that it acknowledges after its own flush, while the
// local device flushes. In async mode it makes them durable here, locally
// and in the journal, and journals a barrier that the peer applies in turn.
func (m *Mirror) Flush() error {
	if !m.begin() {
		return blockdev.ErrClosed
	}
	defer m.inflight.Done()
	return m.rep.flush()
}

// flush sends the peer a barrier that it acknowledges after its own flush,
// while the local device flushes.
func (r syncReplicator) flush() error {
	m := r.m
	l, s := m.joinLink()
	unflushed := m.unflushed.Load()
	var call *transport.Call
	if s != nil {
		c, err := s.SubmitFlush()
		if err != nil {
			m.peerLost(s, err)
		} else {
			call = c
		}
	}
	lerr := m.local.Flush()
	shipped := false
	if call != nil {
		if err := call.Wait(); err != nil {
			m.peerLost(s, err)
		} else {
			shipped = true
			m.unflushed.Add(-unflushed)
		}
	}
	loss := m.lossCount()
	l.io.Done()
	if !shipped && lerr == nil && unflushed > 0 {
		// The peer may not hold durably the writes it acknowledged before
		// this flush: the flush returns only once it counts as outdated.
		return m.ensureFenced(loss)
	}
	return lerr
}

// Resync copies every out-of-sync block to the current peer. Application
// writes go on meanwhile; a block being copied is locked against them, so a
// stale copy never overwrites a newer write. With checksum, each run of
// blocks is first compared by checksum and only the blocks that differ are
// sent: worth it when most of them are likely equal (after a crash, the
// activity log's extents).
//
// In async mode it first waits until the peer acknowledged every journaled
// write, and journals every write while it runs (throttling writers if the
// journal fills), so that no journal record lands after the copy of its
// block.
func (m *Mirror) Resync(ctx context.Context, checksum bool) (err error) {
	m.resyncMu.Lock()
	defer m.resyncMu.Unlock()
	s := m.session()
	if s == nil {
		return fmt.Errorf("resync: %w", transport.ErrDisconnected)
	}
	end, err := m.rep.beginResync(ctx)
	if err != nil {
		return err
	}
	defer func() { end(err) }()
	m.mu.Lock()
	m.resyncing = true
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.resyncing = false
		m.mu.Unlock()
	}()
	err = resync.Run(ctx, resyncSource{m, s}, s, resync.Options{
		Checksum: checksum, Rates: func() (int64, int64) { return m.resyncRate.Load(), m.resyncMinRate.Load() }, Log: m.log,
	}, &m.progress)
	if err == nil {
		err = m.commitPeer(ctx, s)
	}
	return err
}

// resyncSource is the Mirror as the resync and verify of package resync
// see it, for the peer of session s.
type resyncSource struct {
	*Mirror
	s *transport.Session
}

func (r resyncSource) Lock(e bitmap.Extent) (func(), error) {
	if !r.begin() {
		return nil, blockdev.ErrClosed
	}
	r.locks.lock(e)
	return func() { r.locks.unlock(e); r.inflight.Done() }, nil
}

func (r resyncSource) BlockSize() int             { return r.dirty.BlockSize() }
func (r resyncSource) OutOfSync() *roaring.Bitmap { return r.dirty.OutOfSync() }
func (r resyncSource) AppWrites() uint64          { return r.appIO.Load() }
func (r resyncSource) Persist(ctx context.Context) error {
	return r.intent.Sync(ctx)
}

// MarkTarget has the peer stage the resync; only a peer that does not is
// recorded inconsistent with the control plane: one that stages keeps its
// data as it was, and is recorded outdated (it lacks what the resync
// brings).
func (r resyncSource) MarkTarget(ctx context.Context) error {
	staged := false
	if r.stagePeer {
		st, err := r.ProtectPeer(ctx, r.s, true)
		if err != nil {
			return err
		}
		staged = st.State == transport.StageStaging
	}
	return r.markResyncTarget(ctx, staged)
}
func (r resyncSource) PeerLost(s *transport.Session, err error) {
	r.peerLost(s, err)
}

func (r resyncSource) Copied(done *roaring.Bitmap) {
	r.dirty.ClearOutOfSync(done)
	r.intent.ClearOutOfSync(done)
	r.rep.cleared(done)
}

func (r resyncSource) Differ(blocks *roaring.Bitmap) {
	r.dirty.MarkOutOfSync(blocks)
	r.intent.MarkOutOfSync(blocks)
}

// Close waits for I/O in flight to complete (acknowledged by the peer or
// failed), flushes, and closes the local device. The peer session is not
// closed: its owner does that.
func (m *Mirror) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	m.mu.Unlock()
	m.stop() // a write suspended in the fence fails rather than hang the shutdown
	m.inflight.Wait()
	rerr := m.rep.close()
	err := m.local.Flush()
	return errors.Join(rerr, err, m.local.Close())
}

// Status is a snapshot of the primary's replication state.
type Status struct {
	Connected    bool
	Suspended    bool // writes wait for the control plane to mark the peer outdated
	Fenced       bool // the control plane refused to: writes the peer lacks fail
	Replication  State
	LastError    string
	DirtyBlocks  uint64
	InFlight     int
	Window       int
	Writes       uint64 // writes and trims acknowledged by the peer
	Bytes        uint64 // bytes acknowledged by the peer
	Flushes      uint64
	Resync       resync.Counts // of the running (or last) resync
	BlockSize    int
	BitmapMemory uint64 // bytes

	Mode string // "sync" or "async"
	// Async mode only.
	OnFull          string // journal-full policy: "throttle" or "logging"
	JournalUsed     int64  // bytes held by records the peer has not reported durable
	JournalCapacity int64  // bytes
	JournalOldest   uint64 // oldest record held (== JournalNewest+1 when empty)
	JournalNewest   uint64 // newest record written
	JournalAcked    uint64 // last record the peer acknowledged
	PeerDurable     uint64 // last record the peer reported durable
	JournalLag      uint64 // records written here that the peer has not acknowledged
	Throttled       int    // writers waiting for room in the journal
	CatchingUp      bool   // the journal is being replayed to the peer, in order
	CatchUpFrom     uint64 // first record of the running catch-up
	CatchUpTo       uint64 // the head it runs to
	LastCatchUp     string // how the last (re)connect caught up: "journal" or "bitmap"
	// JournalOverflow: journaling stopped (the journal filled while
	// disconnected, or with the logging policy); the blocks are in the
	// bitmap and a bitmap resync brings the peer back.
	JournalOverflow bool
	FallbackReason  string // why journaling stopped, or why the last catch-up was a bitmap resync

	// PeerStage is what the peer last said of its staging area in this
	// session (stage.go): whether it stages the resync, and as of when
	// its volume is consistent.
	PeerStage transport.StageReply
}

// Status returns a snapshot of the replication state.
func (m *Mirror) Status() Status {
	m.mu.Lock()
	peer := m.link.s
	if m.link.lost {
		peer = nil
	}
	st := Status{
		Connected:   peer != nil,
		LastError:   m.lastErr,
		Writes:      m.past.Writes,
		Bytes:       m.past.Bytes,
		Flushes:     m.past.Flushes,
		Replication: StateLogging,
	}
	if peer != nil {
		ps := peer.Stats()
		st.Writes += ps.Writes
		st.Bytes += ps.Bytes
		st.Flushes += ps.Flushes
		st.InFlight, st.Window = ps.InFlight, ps.Window
		st.Replication = StateReplicating
		if m.resyncing {
			st.Replication = StateResyncing
		}
	}
	m.mu.Unlock()
	st.DirtyBlocks = m.dirty.Dirty()
	st.BlockSize = m.dirty.BlockSize()
	st.BitmapMemory = m.dirty.SizeInBytes()
	st.Resync = m.progress.Counts()
	st.Suspended = m.suspended.Load()
	st.Fenced = m.refused.Load()
	st.PeerStage = m.PeerStage(m.session())
	m.rep.status(&st)
	return st
}

// localFailed latches err, the local disk's error on a write, as the
// disk's failure.
func (m *Mirror) localFailed(err error) {
	if m.disk.Latch(err) {
		m.log.Error("this host's disk failed: every write fails from now on", "err", m.disk.Err())
	}
}

// DiskFailed is closed once the local disk failed a write.
func (m *Mirror) DiskFailed() <-chan struct{} { return m.disk.Done() }

// DiskError is the local disk's failure (blockdev.ErrDiskFailed), or nil.
func (m *Mirror) DiskError() error { return m.disk.Err() }
