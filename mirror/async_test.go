package mirror

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/internal/poll"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ldmirror/ldmirror/journal"
	"github.com/ldmirror/ldmirror/transport"
)

// TestAsyncCatchUpKeepsWriteOrder is issue 4's scenario 3: after a short
// disconnect in async mode the journal covers the gap; catch-up replays it
// in order, and snapshots of the secondary's file taken at random moments
// during the catch-up are each the volume after some prefix of the
// primary's writes (write-order fidelity).
//
// The checker can fail: with the Replica applying the catch-up's records in
// parallel (the subtest), or with a bitmap resync instead of the journal
// (the other subtest), it finds states that are no prefix. Measured on one
// run: ordered catch-up, 266 snapshots, all prefixes; parallel apply, 121
// of 169 snapshots no prefix; bitmap resync, 5 of 20.
func TestAsyncCatchUpKeepsWriteOrder(t *testing.T) {
	p := newAsyncPair(t, asyncOptions{})
	h, c := shortDisconnect(t, p, false)
	// A background checker snapshots as well, every 1 to 20 writes.
	stop := make(chan struct{})
	bg := make(chan struct{})
	sawCatchUp := atomic.Bool{}
	go func() {
		defer close(bg)
		rng := rand.New(rand.NewPCG(7, 8))
		for {
			for n := 1 + rng.IntN(20); n > 0; n-- {
				select {
				case <-p.secondary.wrote:
				case <-stop:
					return
				}
			}
			if p.mirror.Status().CatchingUp {
				sawCatchUp.Store(true)
			}
			c.check()
		}
	}()
	p.catchUp()
	close(stop)
	<-bg
	p.secondary.after.Store(nil)

	st := p.mirror.Status()
	if st.LastCatchUp != CatchUpJournal || st.CatchingUp || st.Replication != StateReplicating {
		t.Fatalf("after the catch-up: %+v; want a journal catch-up, replicating", st)
	}
	taken, bad := c.result()
	for _, err := range bad {
		t.Error(err)
	}
	if k, err := h.prefix(p.secondary.snapshot()); err != nil || k != len(h.blocks) {
		t.Fatalf("after the catch-up the secondary is at %d, %v; want all %d writes", k, err, len(h.blocks))
	}
	if !sawCatchUp.Load() {
		t.Error("status never said catching up")
	}
	t.Logf("%d snapshots during the catch-up, all prefixes of the write sequence", taken)
	p.drainAndCompare()
	if rs := p.replica.Status(); rs.JournalDurable != p.jrnl.Next()-1 || p.applied.Position().Seq != rs.JournalDurable {
		t.Fatalf("the secondary's durable position %d (file %+v), the journal's newest %d", rs.JournalDurable, p.applied.Position(), p.jrnl.Next()-1)
	}

	t.Run("parallel apply breaks it", func(t *testing.T) {
		p := newAsyncPair(t, asyncOptions{})
		p.replica.ApplyUnordered()
		h, c := shortDisconnect(t, p, false)
		// Hold the first record the catch-up applies until a later one,
		// which does not overlap it, was applied.
		var held atomic.Bool
		other := make(chan struct{})
		var once sync.Once
		before := func(off int64) {
			if held.CompareAndSwap(false, true) {
				select {
				case <-other:
				case <-time.After(5 * time.Second):
					t.Error("no later record was applied while the first was held: apply is not parallel")
				}
			}
		}
		after := func(off int64) {
			if !held.Load() {
				c.atRandom(off)
				return
			}
			once.Do(func() {
				c.check() // the first record is still held
				close(other)
			})
			c.atRandom(off)
		}
		p.secondary.before.Store(&before)
		p.secondary.after.Store(&after)
		p.catchUp()
		p.secondary.before.Store(nil)
		p.secondary.after.Store(nil)
		taken, bad := c.result()
		if len(bad) == 0 {
			t.Fatalf("%d snapshots, all prefixes: the checker did not catch parallel apply", taken)
		}
		t.Logf("%d of %d snapshots are no prefix, e.g.: %v", len(bad), taken, bad[0])
		if k, err := h.prefix(p.secondary.snapshot()); err != nil || k != len(h.blocks) {
			t.Fatalf("after the catch-up the secondary is at %d, %v", k, err)
		}
		p.drainAndCompare()
	})

	t.Run("bitmap resync breaks it", func(t *testing.T) {
		p := newAsyncPair(t, asyncOptions{})
		h, c := shortDisconnect(t, p, true)
		// One block out of sync for a reason the journal does not cover (a
		// block no write touched): the catch-up must resync the bitmap.
		unwritten := 0
		for len(h.byBlk[unwritten]) > 0 {
			unwritten++
		}
		p.dirty.MarkOutOfSync(roaring.BitmapOf(uint32(unwritten)))
		p.catchUp()
		p.secondary.after.Store(nil)
		if st := p.mirror.Status(); st.LastCatchUp != CatchUpBitmap || !strings.Contains(st.FallbackReason, "out of sync for reasons") {
			t.Fatalf("status %+v, want a bitmap catch-up because of the extra block", st)
		}
		taken, bad := c.result()
		if len(bad) == 0 {
			t.Fatalf("%d snapshots, all prefixes: the checker did not catch the bitmap resync", taken)
		}
		t.Logf("%d of %d snapshots are no prefix, e.g.: %v", len(bad), taken, bad[0])
		p.drainAndCompare()
	})
}

// TestAsyncJournalOverflowFallsBackToBitmap is issue 4's scenario 4: the
// journal overflows during a long disconnect; writes go on, tracked in the
// bitmap; status says so; the reconnect resyncs the bitmap. Afterwards the
// journal is used again: the next short disconnect catches up from it.
func TestAsyncJournalOverflowFallsBackToBitmap(t *testing.T) {
	p := newAsyncPair(t, asyncOptions{capacity: journal.MinCapacity})
	p.connect()
	p.catchUp()
	h := newHistory()
	for i := range 8 {
		h.write(t, p.mirror, i)
	}
	p.drainAndCompare()
	p.disconnect()
	written := roaring.New()
	for i := range 200 { // 800 KiB: far more than the 64 KiB journal
		blk := 100 + 2*i
		h.write(t, p.mirror, blk)
		written.Add(uint32(blk))
	}
	st := p.mirror.Status()
	if !st.JournalOverflow || !strings.Contains(st.FallbackReason, "overflowed while disconnected") || st.Replication != StateLogging {
		t.Fatalf("after overflowing: overflow %v, reason %q, replication %s", st.JournalOverflow, st.FallbackReason, st.Replication)
	}
	if st.DirtyBlocks != written.GetCardinality() {
		t.Fatalf("%d dirty blocks, %d written while disconnected", st.DirtyBlocks, written.GetCardinality())
	}
	if st.JournalUsed > st.JournalCapacity || st.JournalCapacity != journal.MinCapacity {
		t.Fatalf("journal %d of %d bytes", st.JournalUsed, st.JournalCapacity)
	}
	p.connect()
	p.catchUp()
	st = p.mirror.Status()
	if st.LastCatchUp != CatchUpBitmap || st.JournalOverflow || st.Replication != StateReplicating {
		t.Fatalf("after the reconnect: last catch-up %q, overflow %v, replication %s", st.LastCatchUp, st.JournalOverflow, st.Replication)
	}
	p.drainAndCompare()

	// Journaling is back: a short disconnect now catches up from it.
	for i := range 4 {
		h.write(t, p.mirror, 10+i)
	}
	p.drainAndCompare()
	p.disconnect()
	for i := range 4 {
		h.write(t, p.mirror, 20+i)
	}
	p.connect()
	p.catchUp()
	if st := p.mirror.Status(); st.LastCatchUp != CatchUpJournal {
		t.Fatalf("after a short disconnect: last catch-up %q (%s), want journal", st.LastCatchUp, st.FallbackReason)
	}
	p.drainAndCompare()
}

// gate makes the secondary's device hold every write until released.
func gate(p *asyncPair) (release func()) {
	ch := make(chan struct{})
	hook := func(int64) { <-ch }
	p.secondary.before.Store(&hook)
	var once sync.Once
	return func() { once.Do(func() { close(ch); p.secondary.before.Store(nil) }) }
}

// TestAsyncFullJournalThrottles: with the default policy, a journal full
// while connected makes writers wait until the peer made room.
func TestAsyncFullJournalThrottles(t *testing.T) {
	p := newAsyncPair(t, asyncOptions{capacity: journal.MinCapacity, timeout: 30 * time.Second})
	p.connect()
	p.catchUp()
	release := gate(p)
	defer release()
	h := newHistory()
	var done atomic.Int32
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		for i := range 40 { // 160 KiB: more than the journal holds
			h.write(t, p.mirror, i)
			done.Add(1)
		}
	}()
	poll.Until(t, 5*time.Second, "the condition", func() bool { return p.mirror.Status().Throttled == 1 })
	n := done.Load()
	st := p.mirror.Status()
	if n >= 40 || st.JournalOverflow || st.JournalUsed+4096+journal.HeaderSize <= st.JournalCapacity {
		t.Fatalf("throttled after %d writes: %+v", n, st)
	}
	t.Logf("the writer waits after %d writes, journal %d of %d bytes", n, st.JournalUsed, st.JournalCapacity)
	release()
	<-finished
	if st := p.mirror.Status(); st.JournalOverflow || st.LastCatchUp != CatchUpBitmap {
		t.Fatalf("after the release: %+v", st)
	}
	p.drainAndCompare()
}

// TestAsyncFullJournalFallsBackToLogging: with the logging policy, writers
// never wait; the writes that do not fit are tracked in the bitmap, and
// once the journal drained the Mirror resyncs them by itself.
func TestAsyncFullJournalFallsBackToLogging(t *testing.T) {
	var resynced atomic.Int32
	p := newAsyncPair(t, asyncOptions{capacity: journal.MinCapacity, timeout: 30 * time.Second, onFull: FallBackToLogging, resynced: func(context.Context) { resynced.Add(1) }})
	p.connect()
	p.catchUp()
	release := gate(p)
	defer release()
	h := newHistory()
	for i := range 40 {
		h.write(t, p.mirror, i)
	}
	st := p.mirror.Status()
	if !st.JournalOverflow || st.Throttled != 0 || st.Replication != StateLogging || !strings.Contains(st.FallbackReason, "policy logging") {
		t.Fatalf("after 40 writes with the peer stalled: %+v", st)
	}
	release()
	poll.Until(t, 5*time.Second, "the condition", func() bool {
		st := p.mirror.Status()
		return resynced.Load() == 1 && !st.JournalOverflow && st.DirtyBlocks == 0
	})
	for i := range 4 { // journaled again
		h.write(t, p.mirror, 50+i)
	}
	if st := p.mirror.Status(); st.JournalOverflow || st.Replication != StateReplicating {
		t.Fatalf("after the automatic resync: %+v", st)
	}
	p.drainAndCompare()
}

// TestAsyncFence: a journaled write that cannot reach the peer now is
// acknowledged only after the fence; shipped writes never call it.
func TestAsyncFence(t *testing.T) {
	var calls atomic.Int32
	var answer atomic.Pointer[error] // what the fence answers; nil: it commits
	p := newAsyncPair(t, asyncOptions{fence: func(context.Context) error {
		calls.Add(1)
		if e := answer.Load(); e != nil {
			return *e
		}
		return nil
	}})
	p.connect()
	p.catchUp()
	if _, err := p.mirror.WriteAt(make([]byte, 4096), 0); err != nil || calls.Load() != 0 {
		t.Fatalf("connected write: %v, %d fence calls", err, calls.Load())
	}
	p.disconnect()
	for range 3 {
		if _, err := p.mirror.WriteAt(make([]byte, 4096), 4096); err != nil {
			t.Fatal(err)
		}
	}
	if calls.Load() != 1 {
		t.Fatalf("%d fence calls for writes made while disconnected, want 1", calls.Load())
	}
	refused := errors.New("no quorum")
	p.connect()
	p.catchUp()
	answer.Store(&refused)
	p.disconnect()
	if _, err := p.mirror.WriteAt(make([]byte, 4096), 0); !errors.Is(err, ErrFenced) {
		t.Fatalf("write with the fence refusing = %v, want ErrFenced", err)
	}
}

// TestAsyncTrimAndRestart: trims travel through the journal too, and a
// Mirror restarted on the same journal continues its sequence numbers; a
// peer that holds everything catches up from the journal with nothing to
// replay.
func TestAsyncTrimAndRestart(t *testing.T) {
	p := newAsyncPair(t, asyncOptions{})
	p.connect()
	p.catchUp()
	if _, err := p.mirror.WriteAt(bytes.Repeat([]byte{9}, 8192), 0); err != nil {
		t.Fatal(err)
	}
	if err := p.mirror.Trim(4096, 4096); err != nil {
		t.Fatal(err)
	}
	p.drainAndCompare()
	got := make([]byte, 4096)
	if _, err := p.secondary.ReadAt(got, 4096); err != nil || !bytes.Equal(got, make([]byte, 4096)) {
		t.Fatalf("the trim did not reach the secondary (%v)", err)
	}
	next := p.jrnl.Next()
	p.disconnect()
	if err := p.mirror.Close(); err != nil {
		t.Fatal(err)
	}
	j, err := journal.Open(p.jrnlPath)
	if err != nil {
		t.Fatal(err)
	}
	if j.Next() != next {
		t.Fatalf("reopened journal continues at %d, want %d", j.Next(), next)
	}
	p.jrnl = j
	p.mirror = mustNew(t, openFileSized(t, p.priPath, p.size), Config{Dirty: p.dirty, Async: &AsyncConfig{Journal: j}})
	p.connect()
	p.catchUp()
	if st := p.mirror.Status(); st.LastCatchUp != CatchUpJournal {
		t.Fatalf("after the restart: %q (%s)", st.LastCatchUp, st.FallbackReason)
	}
	if _, err := p.mirror.WriteAt(bytes.Repeat([]byte{7}, 4096), 8192); err != nil {
		t.Fatal(err)
	}
	p.drainAndCompare()
	if rs := p.replica.Status(); rs.JournalApplied < next {
		t.Fatalf("the secondary applied up to %d, the restarted primary numbered from %d", rs.JournalApplied, next)
	}
}

// TestAsyncCatchUpInterrupted: the link drops in the middle of a journal
// catch-up; the next one resumes where the secondary got to, and the
// secondary holds a prefix of the writes at every instant of both.
func TestAsyncCatchUpInterrupted(t *testing.T) {
	p := newAsyncPair(t, asyncOptions{})
	h, c := shortDisconnect(t, p, false)
	var writes atomic.Int32
	reached, release := make(chan struct{}), make(chan struct{})
	before := func(int64) {
		if writes.Add(1) == 300 {
			close(reached)
			<-release
		}
	}
	p.secondary.before.Store(&before)
	failed := make(chan error, 1)
	go func() { failed <- p.mirror.CatchUp(context.Background(), false) }()
	<-reached
	p.sess.Close()
	close(release)
	if err := <-failed; !errors.Is(err, transport.ErrDisconnected) {
		t.Fatalf("interrupted catch-up = %v, want ErrDisconnected", err)
	}
	poll.Until(t, 5*time.Second, "the condition", func() bool { return !p.mirror.Status().Connected })
	applied := p.replica.Status().JournalApplied
	p.connect()
	p.catchUp()
	p.secondary.before.Store(nil)
	p.secondary.after.Store(nil)
	st := p.mirror.Status()
	if st.LastCatchUp != CatchUpJournal {
		t.Fatalf("second catch-up: %q (%s)", st.LastCatchUp, st.FallbackReason)
	}
	taken, bad := c.result()
	for _, err := range bad {
		t.Error(err)
	}
	if k, err := h.prefix(p.secondary.snapshot()); err != nil || k != len(h.blocks) {
		t.Fatalf("after the second catch-up the secondary is at %d, %v", k, err)
	}
	t.Logf("interrupted at journal seq %d; %d snapshots, all prefixes", applied, taken)
	p.drainAndCompare()
}

// TestAsyncWritesDuringCatchUp: writers go on while the journal is
// replayed; the catch-up ends and everything reaches the peer.
func TestAsyncWritesDuringCatchUp(t *testing.T) {
	p := newAsyncPair(t, asyncOptions{capacity: 1 << 20})
	p.connect()
	p.catchUp()
	p.disconnect()
	for i := range 150 {
		if _, err := p.mirror.WriteAt(content(i), int64(i%300)*4096); err != nil {
			t.Fatal(err)
		}
	}
	p.connect()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := p.mirror.WriteAt(content(1000*w+i), int64(100*w+i%100)*4096); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	p.catchUp()
	close(stop)
	wg.Wait()
	if st := p.mirror.Status(); st.LastCatchUp != CatchUpJournal {
		t.Fatalf("catch-up %q (%s)", st.LastCatchUp, st.FallbackReason)
	}
	p.drainAndCompare()
}
