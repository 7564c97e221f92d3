package ratelog

import (
	"testing"
	"time"
)

func TestNoteReportsOncePerInterval(t *testing.T) {
	now := time.Unix(0, 0)
	c := New(time.Second)
	c.SetClock(func() time.Time { return now })
	for _, step := range []struct {
		advance time.Duration
		want    uint64
	}{
		{0, 1},                      // the first event is reported at once
		{100 * time.Millisecond, 0}, // then held
		{100 * time.Millisecond, 0}, // and held
		{time.Second, 3},            // with the held ones, after the interval
		{999 * time.Millisecond, 0}, // not before the next interval
		{time.Millisecond, 2},
	} {
		now = now.Add(step.advance)
		if got := c.Note(); got != step.want {
			t.Fatalf("at %v: Note() = %d, want %d", now.Sub(time.Unix(0, 0)), got, step.want)
		}
	}
}
