package scoreboard

import (
	"fmt"
	"slices"

	"github.com/ldmirror/ldmirror/internal/failpoint"
)

// The activity log's committer. BeginWrite calls that find an extent not
// durably hot queue a request; the committer admits queued requests in
// order, as many as fit in the hot set, and writes one transaction (one page,
// one fdatasync) for all of them: group commit. Requests queued while a
// transaction is in flight go into the next one, so N concurrent callers
// cost at most two syncs.

func (s *Scoreboard) commitLoop() {
	defer s.wg.Done()
	for {
		select {
		case <-s.stop:
			s.mu.Lock()
			for _, r := range s.queue {
				if r.state == reqQueued {
					r.state, r.err = reqDone, fmt.Errorf("scoreboard %s: %w", s.name, ErrClosed)
					close(r.done)
				}
			}
			s.queue = s.queue[:0]
			s.mu.Unlock()
			return
		case <-s.wake:
		}
		for s.commit() {
		}
	}
}

// commit admits what it can and writes one transaction if any extent is
// new. It reports whether it made progress (so the loop tries again at once
// for requests that queued meanwhile).
func (s *Scoreboard) commit() bool {
	s.mu.Lock()
	if s.err != nil {
		s.failLocked(s.err)
		s.mu.Unlock()
		return false
	}
	granted, added, needMap := s.admitLocked()
	if needMap {
		// Extents that could make room hold out-of-sync marks that are not
		// durable yet: have the cleaner persist the map; it wakes us after.
		signal(s.kick)
	}
	if len(granted) == 0 {
		s.mu.Unlock()
		return false
	}
	if len(added) == 0 {
		// Every extent was durably hot by now (it was in the transaction in
		// flight when the caller looked): nothing to write.
		s.completeLocked(granted, nil)
		s.mu.Unlock()
		return true
	}
	t := txn{number: s.txnNum + 1, extents: s.keys[:0]}
	for x := range s.hot {
		t.extents = append(t.extents, x)
	}
	sortUint32(t.extents)
	s.keys = t.extents
	t.encode(s.txnBuf, s.nonce)
	s.mu.Unlock()

	err := s.writeTxn(t.number)

	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.failLocked(fmt.Errorf("write activity log: %w", err))
		s.completeLocked(granted, s.err)
		return false
	}
	s.txnNum = t.number
	s.stats.Transactions++
	// Only now, with the transaction durable, may later writes skip it.
	for _, es := range added {
		es.durable = true
	}
	clear(added)
	s.completeLocked(granted, nil)
	return true
}

// writeTxn writes the encoded transaction in s.txnBuf to its ring slot and
// makes it durable. Only the newest transaction matters at recovery, so the
// slot overwritten is always one older than the newest durable one.
func (s *Scoreboard) writeTxn(number uint64) error {
	off := s.layout.alOff + pageSize*int64(number%uint64(s.layout.alSlots))
	if failpoint.Reached("activitylog-torn-write") {
		_, _ = s.store.WriteAt(s.txnBuf[:len(s.txnBuf)/2], off)
		failpoint.Kill("activitylog-torn-write")
	}
	if _, err := s.store.WriteAt(s.txnBuf, off); err != nil {
		return err
	}
	return s.store.Sync()
}

// completeLocked tells granted requests their outcome. A request whose
// caller gave up, or whose transaction failed, releases its extents.
func (s *Scoreboard) completeLocked(granted []*request, err error) {
	for _, r := range granted {
		if r.state == reqAbandoned || err != nil {
			s.unpinLocked(r.lo, r.hi)
		}
		r.state, r.err = reqDone, err
		close(r.done)
	}
	clear(s.granted)
}

// admitLocked grants queued requests in order while they fit, evicting
// cold extents as needed. A request that does not fit blocks those behind
// it (first come, first served; no starvation of wide writes). needMap
// reports that room is held up only by out-of-sync marks not yet durable.
//
// A request pins its extents only when granted, so requests waiting in the
// queue hold nothing: a full log can always drain once the writes in flight
// end, and no set of half-admitted writes can deadlock it.
func (s *Scoreboard) admitLocked() (granted []*request, added []*extent, needMap bool) {
	granted, added = s.granted[:0], s.added[:0]
	for len(s.queue) > 0 {
		r := s.queue[0]
		if r.state == reqAbandoned {
			s.popLocked()
			continue
		}
		need := 0
		for x := r.lo; ; x++ {
			if s.hot[x] == nil {
				need++
			}
			if x == r.hi {
				break
			}
		}
		if over := len(s.hot) + need - s.hotCap; over > 0 {
			if ok, blocked := s.evictLocked(over, r.lo, r.hi); !ok {
				needMap = blocked
				break
			}
		}
		s.tick++
		for x := r.lo; ; x++ {
			es := s.hot[x]
			if es == nil {
				es = &extent{num: x}
				if first, end := s.blocksOf(x); s.memGen > s.diskGen && s.oos.IntersectsWithInterval(first, end) {
					// Marks made while the extent was cold are not durable
					// yet; do not let it leave before they are.
					es.changed = s.memGen
				}
				s.hot[x] = es
				added = append(added, es)
			}
			es.inflight++
			es.lastUse = s.tick
			if x == r.hi {
				break
			}
		}
		r.state = reqGranted
		granted = append(granted, r)
		s.popLocked()
	}
	s.granted, s.added = granted, added
	return granted, added, needMap
}

func (s *Scoreboard) popLocked() {
	s.queue[0] = nil
	s.queue = s.queue[1:]
	if len(s.queue) == 0 {
		s.queue = s.queue[:0:0]
	}
}

// evictLocked removes the n least recently used extents that may leave the
// log: no write in flight, durable, not wanted by the request [lo, hi], and
// every out-of-sync mark in them durable in the map. It removes nothing and
// reports ok=false if fewer than n qualify; blocked then says whether
// undurable marks are what held some back.
func (s *Scoreboard) evictLocked(n int, lo, hi uint32) (ok, blocked bool) {
	cands := s.cands[:0]
	for _, es := range s.hot {
		if es.inflight > 0 || !es.durable || (es.num >= lo && es.num <= hi) {
			continue
		}
		if es.changed > s.diskGen {
			blocked = true
			continue
		}
		cands = append(cands, es)
	}
	defer func() { clear(cands); s.cands = cands[:0] }()
	if len(cands) < n {
		s.stats.Stalls++
		return false, blocked
	}
	slices.SortFunc(cands, func(a, b *extent) int {
		switch {
		case a.lastUse < b.lastUse:
			return -1
		case a.lastUse > b.lastUse:
			return 1
		}
		return 0
	})
	for _, es := range cands[:n] {
		delete(s.hot, es.num)
	}
	s.stats.Evictions += uint64(n)
	return true, false
}

func sortUint32(x []uint32) { slices.Sort(x) }
