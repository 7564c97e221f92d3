// Package ratelog counts events that would flood a log if each had its own
// line, such as connections shed before they authenticate, and says at
// most once per interval how many happened.
package ratelog

import (
	"sync"
	"time"
)

// Counter counts events and reports them at most once per interval. The
// zero value is not usable: make one with New.
type Counter struct {
	interval time.Duration
	mu       sync.Mutex
	now      func() time.Time
	last     time.Time
	pending  uint64
}

// New returns a Counter that reports at most once per interval.
func New(interval time.Duration) *Counter {
	return &Counter{interval: interval, now: time.Now}
}

// SetClock replaces time.Now, for tests.
func (c *Counter) SetClock(now func() time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = now
}

// Note counts an event and returns the number to log, or 0 if the last
// report is less than the interval old.
func (c *Counter) Note() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pending++
	now := c.now()
	if !c.last.IsZero() && now.Sub(c.last) < c.interval {
		return 0
	}
	n := c.pending
	c.last, c.pending = now, 0
	return n
}
