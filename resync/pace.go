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
	max, min int64                 // bytes per second; 0: unlimited / never yield
	rates    func() (int64, int64) // if set, max and min, asked again while waiting
	appIO    func() uint64         // application writes so far
	now      func() time.Time
	yielding func(bool) // told whether the minimum rate applies

	lastIO    uint64
	lastCheck time.Time
	busy      bool
	rate      int64     // the rate of the last reservation (0: unlimited)
	due       time.Time // when the last bytes reserved may be sent
	next      time.Time // when the bytes reserved so far are due
}

// recheck bounds one sleep of wait, so that new rates apply within it.
const recheck = 100 * time.Millisecond

// wait reserves n bytes and sleeps until they may be sent, unless ctx ends
// first. Rates changed meanwhile (pacer.rates) rescale what is left of the
// wait.
func (p *pacer) wait(ctx context.Context, n int64) error {
	d := p.delay(n)
	for d > 0 {
		t := time.NewTimer(min(d, recheck))
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		}
		now := p.now()
		p.refresh(now)
		d = p.due.Sub(now)
	}
	return nil
}

// refresh asks for the rates again; if they changed, the reservations not
// yet due are rescaled to the new rate.
func (p *pacer) refresh(now time.Time) {
	if p.rates == nil {
		return
	}
	max, min := p.rates()
	if max == p.max && min == p.min {
		return
	}
	p.max, p.min = max, min
	old, rate := p.rate, p.current()
	p.rate = rate
	scale := func(t time.Time) time.Time {
		if !t.After(now) {
			return t
		}
		if rate <= 0 || old <= 0 {
			return now
		}
		return now.Add(time.Duration(float64(t.Sub(now)) * float64(old) / float64(rate)))
	}
	p.due, p.next = scale(p.due), scale(p.next)
}

// current is the rate that applies now: the minimum while the application
// writes, else the maximum.
func (p *pacer) current() int64 {
	rate := p.max
	if p.busy && p.min > 0 && (rate == 0 || p.min < rate) {
		rate = p.min
	}
	return rate
}

// delay reserves n bytes and returns how long to wait before sending them.
func (p *pacer) delay(n int64) time.Duration {
	if p.rates != nil {
		p.max, p.min = p.rates()
	}
	now := p.now()
	if p.lastCheck.IsZero() || now.Sub(p.lastCheck) >= appWindow {
		io := p.appIO()
		p.busy = !p.lastCheck.IsZero() && io != p.lastIO
		p.lastIO, p.lastCheck = io, now
	}
	rate := p.current()
	yield := rate != p.max
	if p.yielding != nil {
		p.yielding(yield)
	}
	p.rate = rate
	if rate <= 0 {
		p.next, p.due = now, now
		return 0
	}
	if p.next.Before(now) {
		p.next = now
	}
	p.due = p.next
	wait := p.next.Sub(now)
	p.next = p.next.Add(time.Duration(float64(n) / float64(rate) * float64(time.Second)))
	return wait
}
