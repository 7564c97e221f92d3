package resync

import (
	"context"
	"time"
)

// appWindow is how recent an application write must be for a resync to
// yield to it.
const appWindow = 100 * time.Millisecond

// pacer spaces a resync's traffic: at most the maximum rate, and only
// the minimum rate while the application writes (DRBD's c-min-rate): the
// resync yields the link and the disks to the writes users wait for, and
// takes them all when the volume is idle.
type pacer struct {
	max, min int64         // bytes per second; 0: unlimited / never yield
	appIO    func() uint64 // application writes so far
	now      func() time.Time
	yielding func(bool) // told whether the minimum rate applies

	lastIO    uint64
	lastCheck time.Time
	busy      bool
	next      time.Time // when the bytes reserved so far are due
}

// delay reserves n bytes and returns how long to wait before sending them.
func (p *pacer) delay(n int64) time.Duration {
	now := p.now()
	if p.lastCheck.IsZero() || now.Sub(p.lastCheck) >= appWindow {
		io := p.appIO()
		p.busy = !p.lastCheck.IsZero() && io != p.lastIO
		p.lastIO, p.lastCheck = io, now
	}
	rate := p.max
	yield := p.busy && p.min > 0 && (rate == 0 || p.min < rate)
	if yield {
		rate = p.min
	}
	if p.yielding != nil {
		p.yielding(yield)
	}
	if rate <= 0 {
		p.next = now
		return 0
	}
	if p.next.Before(now) {
		p.next = now
	}
	wait := p.next.Sub(now)
	p.next = p.next.Add(time.Duration(float64(n) / float64(rate) * float64(time.Second)))
	return wait
}

// wait sleeps for d unless ctx ends first.
func wait(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
