package scoreboard

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/RoaringBitmap/roaring/v2"

	"github.com/ldmirror/ldmirror/bitmap"
)

// DefaultCleanInterval is how often the cleaner persists a changed
// out-of-sync map when nothing asks it to sooner (md's bitmap daemon sleeps
// 5 s as well).
const DefaultCleanInterval = 5 * time.Second

// Options are the runtime tunables. The zero value means the defaults.
type Options struct {
	// HotExtents bounds the activity log: at most this many extents are hot
	// at once (2..MaxHotExtents). More means fewer log writes under a wide
	// working set and more to resync after a crash. Default 512 (2 GiB of
	// 4 MiB extents).
	HotExtents int
	// CleanInterval is how often the cleaner persists a changed out-of-sync
	// map. A negative value turns the timer off: the map is then persisted
	// only by Sync, when the activity log needs room, and at Close.
	CleanInterval time.Duration
	// ALSlots is the activity-log ring length in 4 KiB pages, used by Format
	// and Create only (later opens read it from the superblock). Default 8.
	ALSlots int
}

func (o Options) withDefaults() (Options, error) {
	if o.HotExtents == 0 {
		o.HotExtents = DefaultHotExtents
	}
	if o.CleanInterval == 0 {
		o.CleanInterval = DefaultCleanInterval
	}
	if o.ALSlots == 0 {
		o.ALSlots = DefaultALSlots
	}
	if o.HotExtents < 2 || o.HotExtents > MaxHotExtents {
		return o, fmt.Errorf("scoreboard: HotExtents %d out of range [2, %d]", o.HotExtents, MaxHotExtents)
	}
	if o.ALSlots < 2 || o.ALSlots > 1<<16 {
		return o, fmt.Errorf("scoreboard: ALSlots %d out of range [2, 65536]", o.ALSlots)
	}
	return o, nil
}

// Scoreboard is the durable out-of-sync map and activity log of one volume
// towards one peer. It is safe for concurrent use. Its two goroutines (the
// activity-log committer and the map cleaner) end in Close.
type Scoreboard struct {
	name     string
	store    Store
	closer   io.Closer // the file Open or Create opened; nil for OpenStore
	geom     Geometry
	shift    uint // block number >> shift = extent number
	blocks   uint64
	nonce    uint64
	layout   layout
	hotCap   int
	interval time.Duration

	recovered *roaring.Bitmap // what Open found may differ; never changed after
	clean     bool            // the activity log was empty at Open

	wake chan struct{} // to the committer: requests queued or room made
	kick chan struct{} // to the cleaner: persist the map now
	stop chan struct{}
	wg   sync.WaitGroup

	mu     sync.Mutex
	closed bool
	err    error // sticky: a metadata write failed; nothing is trusted after
	// hot is the activity log in memory: every extent of the newest durable
	// transaction plus those being added by the one in flight.
	hot   map[uint32]*extent
	tick  uint64 // LRU clock
	queue []*request
	oos   *roaring.Bitmap
	// memGen counts changes to oos; diskGen is the memGen the newest durable
	// map slot holds. An extent may leave the log only if its last
	// out-of-sync change is <= diskGen.
	memGen, diskGen uint64
	persisted       chan struct{} // closed and replaced after each persist attempt
	txnNum          uint64        // newest durable activity-log transaction
	mapGen          uint64        // generation of the newest durable map slot
	stats           Stats

	// Owned by the committer goroutine (and Close once it has ended).
	txnBuf  []byte
	keys    []uint32
	granted []*request
	added   []*extent
	cands   []*extent
	// Owned by the cleaner goroutine (and Close once it has ended).
	mapBuf []byte
}

// extent is one activity-log extent in memory.
type extent struct {
	num uint32
	// durable is set only once a transaction listing the extent is on disk
	// (the dm-era lesson: never believe "already marked" before the mark is
	// durable, or a later write skips it).
	durable  bool
	inflight uint32 // BeginWrite calls not yet ended
	changed  uint64 // memGen of the last out-of-sync mark in the extent
	lastUse  uint64
}

type reqState uint8

const (
	reqQueued    reqState = iota
	reqGranted            // extents pinned, transaction in flight
	reqAbandoned          // the caller gave up (context)
	reqDone
)

// request is a BeginWrite that needs extents that are not durably hot.
type request struct {
	lo, hi uint32 // extent numbers, inclusive
	state  reqState
	err    error
	done   chan struct{}
}

// Stats is a snapshot of the scoreboard's counters.
type Stats struct {
	HotExtents      int    // extents in the activity log
	OutOfSyncBlocks uint64 // blocks in the in-memory out-of-sync map
	Transactions    uint64 // activity-log transactions written since Open
	MapWrites       uint64 // out-of-sync map slots written since Open
	Evictions       uint64 // extents that left the activity log
	Stalls          uint64 // times the committer found the log full and had to wait
	MemoryBytes     uint64 // estimate of the memory held
}

// blocksOf returns the block range [first, end) of extent x, clipped to the
// volume.
func (s *Scoreboard) blocksOf(x uint32) (first, end uint64) {
	first = uint64(x) << s.shift
	end = min(first+1<<s.shift, s.blocks)
	return first, end
}

// Recovered returns what Open found may differ from the peer: the durable
// out-of-sync map ∪ every block of the extents the activity log held. After
// a clean Close it is exactly the out-of-sync map. These blocks are also in
// OutOfSync until ClearOutOfSync removes them.
func (s *Scoreboard) Recovered() *roaring.Bitmap { return s.recovered.Clone() }

// WasClean reports whether the activity log was empty at Open: the previous
// run ended with Close and no write in flight.
func (s *Scoreboard) WasClean() bool { return s.clean }

func (s *Scoreboard) extentsOf(e bitmap.Extent) (lo, hi uint32, err error) {
	if e.First > e.Last || uint64(e.Last) >= s.blocks {
		return 0, 0, fmt.Errorf("%w: blocks [%d, %d] of %d", ErrRange, e.First, e.Last, s.blocks)
	}
	lo, hi = e.First>>s.shift, e.Last>>s.shift
	if int(hi-lo)+1 > s.hotCap {
		return 0, 0, fmt.Errorf("%w: blocks [%d, %d] touch %d extents, the log holds %d", ErrSpan, e.First, e.Last, hi-lo+1, s.hotCap)
	}
	return lo, hi, nil
}

// usableLocked returns why no new write may begin, if one may not.
func (s *Scoreboard) usableLocked() error {
	if s.err != nil {
		return s.err
	}
	if s.closed {
		return fmt.Errorf("scoreboard %s: %w", s.name, ErrClosed)
	}
	return nil
}

// BeginWrite returns once every activity-log extent that blocks e touch is
// durably hot; call it before issuing the local write of e, and EndWrite
// after. When the extents are already hot it returns at once, with no I/O and
// no allocation. Otherwise the caller joins the next activity-log
// transaction, which concurrent callers share (one page write, one
// fdatasync). If ctx ends first, BeginWrite returns its error and the write
// must not be issued (and EndWrite not called).
func (s *Scoreboard) BeginWrite(ctx context.Context, e bitmap.Extent) error {
	lo, hi, err := s.extentsOf(e)
	if err != nil {
		return fmt.Errorf("scoreboard %s: %w", s.name, err)
	}
	s.mu.Lock()
	if err := s.usableLocked(); err != nil {
		s.mu.Unlock()
		return err
	}
	if s.pinIfHotLocked(lo, hi) {
		s.mu.Unlock()
		return nil
	}
	r := &request{lo: lo, hi: hi, done: make(chan struct{})}
	s.queue = append(s.queue, r)
	s.mu.Unlock()
	signal(s.wake)

	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.state == reqDone {
		return r.err
	}
	// Queued: the committer drops it. Granted: the committer unpins its
	// extents when the transaction in flight completes.
	r.state = reqAbandoned
	return fmt.Errorf("scoreboard %s: waiting for the activity log: %w", s.name, ctx.Err())
}

// pinIfHotLocked counts a write into extents [lo, hi] if all of them are
// durably hot, and reports whether it did.
func (s *Scoreboard) pinIfHotLocked(lo, hi uint32) bool {
	for x := lo; ; x++ {
		es := s.hot[x]
		if es == nil || !es.durable {
			return false
		}
		if x == hi {
			break
		}
	}
	s.tick++
	for x := lo; ; x++ {
		es := s.hot[x]
		es.inflight++
		es.lastUse = s.tick
		if x == hi {
			break
		}
	}
	return true
}

func (s *Scoreboard) unpinLocked(lo, hi uint32) {
	for x := lo; ; x++ {
		if es := s.hot[x]; es != nil && es.inflight > 0 {
			es.inflight--
		}
		if x == hi {
			break
		}
	}
}

// EndWrite records that a write of e that BeginWrite admitted is over.
// inSync is true when the write completed on both hosts (bitmap.Set.Ack);
// false when it failed on either side or was not shipped (bitmap.Set.Fail):
// its blocks then become out of sync, atomically with the end of the write,
// so the extent cannot leave the activity log before a map holding them is
// durable. EndWrite does no I/O. Calling it without a matching successful
// BeginWrite panics.
func (s *Scoreboard) EndWrite(e bitmap.Extent, inSync bool) {
	lo, hi := e.First>>s.shift, e.Last>>s.shift
	s.mu.Lock()
	if !inSync {
		s.oos.AddRange(uint64(e.First), uint64(e.Last)+1)
		s.memGen++
	}
	wake := false
	for x := lo; ; x++ {
		es := s.hot[x]
		if es == nil || es.inflight == 0 {
			s.mu.Unlock()
			panic(fmt.Sprintf("scoreboard: EndWrite of extent %d with no write in flight", x))
		}
		if !inSync {
			es.changed = s.memGen
		}
		es.inflight--
		wake = wake || (es.inflight == 0 && len(s.queue) > 0)
		if x == hi {
			break
		}
	}
	s.mu.Unlock()
	if wake {
		signal(s.wake)
	}
}

// MarkOutOfSync adds blocks to the out-of-sync map in memory (blocks past
// the end of the volume are ignored). Marks inside hot extents are covered
// by the activity log at once; others are durable after the next persist:
// call Sync when that matters (e.g. after merging the peer's dirty set).
func (s *Scoreboard) MarkOutOfSync(blocks *roaring.Bitmap) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.oos.Or(blocks)
	if !s.oos.IsEmpty() && uint64(s.oos.Maximum()) >= s.blocks {
		s.oos.RemoveRange(s.blocks, 1<<32)
	}
	s.memGen++
	if blocks.GetCardinality() > uint64(len(s.hot)) {
		// A bulk mark: checking each hot extent is the shorter walk.
		for _, es := range s.hot {
			if first, end := s.blocksOf(es.num); blocks.IntersectsWithInterval(first, end) {
				es.changed = s.memGen
			}
		}
		return
	}
	it := blocks.Iterator()
	for it.HasNext() {
		x := it.Next() >> s.shift
		if es := s.hot[x]; es != nil {
			es.changed = s.memGen
		}
		it.AdvanceIfNeeded((x + 1) << s.shift)
	}
}

// ClearOutOfSync removes blocks from the out-of-sync map in memory, after a
// resync copied them. The clear is persisted lazily; until then the durable
// map still holds the blocks, which is safe (a crash resyncs them again).
func (s *Scoreboard) ClearOutOfSync(blocks *roaring.Bitmap) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.oos.AndNot(blocks)
	s.memGen++
}

// OutOfSync returns a copy of the out-of-sync map in memory.
func (s *Scoreboard) OutOfSync() *roaring.Bitmap {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.oos.Clone()
}

// Sync returns once every out-of-sync change made before the call is
// durable.
func (s *Scoreboard) Sync(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.usableLocked(); err != nil {
		return err
	}
	target := s.memGen
	for s.diskGen < target {
		if s.err != nil {
			return s.err
		}
		ch := s.persisted
		s.mu.Unlock()
		signal(s.kick)
		select {
		case <-ch:
		case <-ctx.Done():
			s.mu.Lock()
			return fmt.Errorf("scoreboard %s: sync: %w", s.name, ctx.Err())
		}
		s.mu.Lock()
	}
	return nil
}

// Stats returns a snapshot of the counters.
func (s *Scoreboard) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.HotExtents = len(s.hot)
	st.OutOfSyncBlocks = s.oos.GetCardinality()
	st.MemoryBytes = s.memoryLocked()
	return st
}

// memoryLocked estimates the bytes held: the map, the hot set (entry plus
// map overhead), the reusable buffers and the recovered copy.
func (s *Scoreboard) memoryLocked() uint64 {
	// A hot extent costs its 48-byte struct, a map slot (about 32 bytes at
	// the map's lowest load) and 36 bytes across the committer's reused
	// slices (queue, granted, added, candidates, keys): measured ~120.
	const perExtent = 48 + 32 + 36
	return s.oos.GetSizeInBytes() + s.recovered.GetSizeInBytes() +
		uint64(len(s.hot))*perExtent + uint64(cap(s.txnBuf)+cap(s.mapBuf))
}

// failLocked makes err sticky: after a failed metadata write the on-disk
// state is unknown, so no further write may begin (DRBD detaches the disk on
// a meta-data I/O error for the same reason).
func (s *Scoreboard) failLocked(err error) {
	if s.err == nil {
		s.err = fmt.Errorf("scoreboard %s: %w: %w", s.name, ErrFailed, err)
	}
	for _, r := range s.queue {
		if r.state == reqQueued {
			r.state, r.err = reqDone, s.err
			close(r.done)
		}
	}
	s.queue = s.queue[:0]
	close(s.persisted)
	s.persisted = make(chan struct{})
}

// Close stops the committer and the cleaner, persists the out-of-sync map
// and writes a final activity-log transaction that keeps only extents with
// writes still in flight (none, after an orderly shutdown: then the log is
// empty and the next Open sees a clean shutdown). BeginWrite calls still
// waiting fail with ErrClosed. Close closes the file Open or Create opened.
func (s *Scoreboard) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	close(s.stop)
	s.wg.Wait()

	s.persist()
	s.mu.Lock()
	err := s.err
	if err == nil {
		t := txn{number: s.txnNum + 1, extents: s.keys[:0]}
		for x, es := range s.hot {
			if es.inflight > 0 || es.changed > s.diskGen {
				t.extents = append(t.extents, x)
			}
		}
		t.clean = len(t.extents) == 0
		sortUint32(t.extents)
		t.encode(s.txnBuf, s.nonce)
		s.mu.Unlock()
		werr := s.writeTxn(t.number)
		s.mu.Lock()
		if werr != nil {
			s.failLocked(fmt.Errorf("write activity log: %w", werr))
			err = s.err
		} else {
			s.txnNum = t.number
			s.stats.Transactions++
			for x, es := range s.hot {
				if es.inflight == 0 && es.changed <= s.diskGen {
					delete(s.hot, x)
				}
			}
		}
	}
	s.mu.Unlock()
	if s.closer != nil {
		err = errors.Join(err, s.closer.Close())
	}
	return err
}

// signal wakes the goroutine reading ch without blocking: ch has room for
// one pending wake-up, which is all a level-triggered loop needs.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
