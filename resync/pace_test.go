package resync

import (
	"context"
	"testing"
	"time"
)

func TestResyncPacer(t *testing.T) {
	const kib = 1 << 10
	for _, tc := range []struct {
		name     string
		max, min int64
		appBusy  bool
		sends    []int64
		want     []time.Duration
		yielding bool
	}{
		{"unlimited and idle: no wait", 0, 64 * kib, false, []int64{256 * kib, 256 * kib}, []time.Duration{0, 0}, false},
		{"maximum rate spaces runs", 1024 * kib, 0, false, []int64{256 * kib, 256 * kib, 256 * kib},
			[]time.Duration{0, 250 * time.Millisecond, 500 * time.Millisecond}, false},
		{"application writes: the minimum rate", 0, 64 * kib, true, []int64{64 * kib, 64 * kib},
			[]time.Duration{0, time.Second}, true},
		{"a minimum above the maximum never yields", 64 * kib, 1024 * kib, true, []int64{64 * kib, 64 * kib},
			[]time.Duration{0, time.Second}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := time.Unix(1000, 0)
			var io uint64
			var yielding bool
			p := &pacer{max: tc.max, min: tc.min, appIO: func() uint64 { return io },
				now: func() time.Time { return clock }, yielding: func(y bool) { yielding = y }}
			p.delay(0) // first look at the application's writes
			clock = clock.Add(appWindow)
			if tc.appBusy {
				io++
			}
			for i, n := range tc.sends {
				if got := p.delay(n); got != tc.want[i] {
					t.Fatalf("send %d of %d bytes: wait %v, want %v", i, n, got, tc.want[i])
				}
			}
			if yielding != tc.yielding {
				t.Fatalf("yielding = %v, want %v", yielding, tc.yielding)
			}
		})
	}
}

// TestResyncPacerStopsYielding checks that the resync takes the full rate
// again once the application stops writing.
func TestResyncPacerStopsYielding(t *testing.T) {
	clock := time.Unix(1000, 0)
	var io uint64
	p := &pacer{min: 64 << 10, appIO: func() uint64 { return io }, now: func() time.Time { return clock }}
	p.delay(0)
	clock, io = clock.Add(appWindow), io+1
	if p.delay(64 << 10); p.delay(64<<10) == 0 {
		t.Fatal("no wait while the application writes")
	}
	clock = clock.Add(2 * time.Second) // idle since
	p.delay(0)
	clock = clock.Add(appWindow)
	if d := p.delay(64 << 10); d != 0 {
		t.Fatalf("wait %v after the application stopped writing", d)
	}
}

// TestResyncPacerNewRate checks that a rate changed while a resync runs
// (SIGHUP) rescales the wait already reserved at the old rate.
func TestResyncPacerNewRate(t *testing.T) {
	clock := time.Unix(1000, 0)
	rate := int64(1 << 20)
	p := &pacer{rates: func() (int64, int64) { return rate, 0 }, appIO: func() uint64 { return 0 }, now: func() time.Time { return clock }}
	p.delay(1 << 20) // 1 s of traffic at 1 MiB/s reserved
	if d := p.delay(1 << 20); d != time.Second {
		t.Fatalf("wait %v at 1 MiB/s, want 1s", d)
	}
	rate = 4 << 20
	p.refresh(clock)
	if d := p.due.Sub(clock); d != 250*time.Millisecond {
		t.Fatalf("wait %v left after the rate went to 4 MiB/s, want 250ms", d)
	}
	rate = 0
	p.refresh(clock)
	if d := p.due.Sub(clock); d != 0 {
		t.Fatalf("wait %v left after the limit was lifted, want none", d)
	}
	ctx := context.Background()
	rate = 1 << 30
	if err := p.wait(ctx, 1<<20); err != nil || !p.due.Equal(clock) {
		t.Fatalf("wait at 1 GiB/s: %v, due %v after now", err, p.due.Sub(clock))
	}
}
