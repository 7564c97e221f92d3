package mirror

import (
	"sync"

	"github.com/ldmirror/ldmirror/bitmap"
)

// rangeLock serializes writes whose block extents overlap, so that the local
// write order of conflicting writes is also their shipping order: without it
// two concurrent writes to one block could land in one order here and in the
// other order on the peer. Non-overlapping writes never wait.
type rangeLock struct {
	mu     sync.Mutex
	cond   sync.Cond
	active []bitmap.Extent
}

func newRangeLock() *rangeLock {
	l := &rangeLock{active: make([]bitmap.Extent, 0, 64)}
	l.cond.L = &l.mu
	return l
}

func overlaps(a, b bitmap.Extent) bool { return a.First <= b.Last && b.First <= a.Last }

func (l *rangeLock) lock(e bitmap.Extent) {
	l.mu.Lock()
	for l.conflicts(e) {
		l.cond.Wait()
	}
	l.active = append(l.active, e)
	l.mu.Unlock()
}

func (l *rangeLock) conflicts(e bitmap.Extent) bool {
	for _, a := range l.active {
		if overlaps(a, e) {
			return true
		}
	}
	return false
}

func (l *rangeLock) unlock(e bitmap.Extent) {
	l.mu.Lock()
	for i, a := range l.active {
		if a == e {
			last := len(l.active) - 1
			l.active[i] = l.active[last]
			l.active = l.active[:last]
			break
		}
	}
	l.mu.Unlock()
	l.cond.Broadcast()
}
