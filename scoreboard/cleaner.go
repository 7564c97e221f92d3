package scoreboard

import (
	"fmt"
	"time"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ldmirror/ldmirror/internal/failpoint"
)

// The cleaner persists the out-of-sync map: every CleanInterval if it
// changed, when Sync asks, and when the activity log needs room that only a
// durable map can free. Clears therefore cost no I/O on the write path (the
// deferred-expunge idea): they reach disk with the next persist, and until
// then the durable map is a superset, which is safe.

func (s *Scoreboard) cleanLoop() {
	defer s.wg.Done()
	var tick <-chan time.Time
	if s.interval > 0 {
		t := time.NewTicker(s.interval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-s.stop:
			return
		case <-tick:
		case <-s.kick:
		}
		s.persist()
	}
}

// persist writes the in-memory map to the slot that does not hold the
// newest durable generation, syncs, and only then moves diskGen forward, so
// eviction never trusts a map that is not on disk. Callers are serialized:
// the cleaner goroutine, or Close after it has ended.
func (s *Scoreboard) persist() {
	s.mu.Lock()
	if s.err != nil || s.memGen == s.diskGen {
		s.mu.Unlock()
		return
	}
	snap := s.oos.Clone()
	gen, slotGen := s.memGen, s.mapGen+1
	s.mu.Unlock()

	err := s.writeMap(snap, slotGen)

	s.mu.Lock()
	if err != nil {
		s.failLocked(fmt.Errorf("write out-of-sync map: %w", err))
	} else {
		s.diskGen, s.mapGen = gen, slotGen
		s.stats.MapWrites++
		close(s.persisted)
		s.persisted = make(chan struct{})
	}
	s.mu.Unlock()
	signal(s.wake)
}

// maxKeptMapBuf is the largest encode buffer kept between persists: a clean
// or lightly dirty map reuses it, a heavily dirty one does not pin megabytes.
const maxKeptMapBuf = 1 << 20

func (s *Scoreboard) writeMap(snap *roaring.Bitmap, gen uint64) error {
	buf, err := encodeMap(s.mapBuf, snap, s.nonce, gen, s.layout.slotCap)
	if err != nil {
		return err
	}
	if cap(buf) <= maxKeptMapBuf {
		s.mapBuf = buf[:0]
	} else {
		s.mapBuf = nil
	}
	if failpoint.Reached("scoreboard-map-torn-write") {
		_, _ = s.store.WriteAt(buf[:len(buf)/2], s.layout.slotOffs[gen%2])
		failpoint.Kill("scoreboard-map-torn-write")
	}
	if _, err := s.store.WriteAt(buf, s.layout.slotOffs[gen%2]); err != nil {
		return err
	}
	return s.store.Sync()
}
