package retrier

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/internal/slapdtest"
)

// lateContext has a deadline but its Done channel closes only later: what
// a call sees when the runtime fires the deadline's timer late on a loaded
// machine.
type lateContext struct {
	context.Context // never done
	deadline        time.Time
	done            <-chan struct{}
}

func (c lateContext) Deadline() (time.Time, bool) { return c.deadline, true }
func (c lateContext) Done() <-chan struct{}       { return c.done }
func (c lateContext) Err() error {
	select {
	case <-c.done:
		return context.DeadlineExceeded
	default:
		return nil
	}
}

// TestNoAttemptsWithoutTimeLeft (issue 18, defect 4): once the deadline
// has passed, no server is dialled again, even before the context says
// so; the number of attempts stays proportional to the deadline and the
// backoff (one call logged 1599 attempts in 2.0 s).
func TestNoAttemptsWithoutTimeLeft(t *testing.T) {
	a := slapdtest.New(t, slapdtest.Options{}) // configured, never started: refused at once
	b := slapdtest.New(t, slapdtest.Options{})
	s, err := OpenLazy(Config{Primary: a.URL, Secondary: b.URL, MinBackoff: 50 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const deadline = 300 * time.Millisecond
	late := make(chan struct{})
	timer := time.AfterFunc(deadline+500*time.Millisecond, func() { close(late) })
	defer timer.Stop()
	ctx := lateContext{Context: context.Background(), deadline: time.Now().Add(deadline), done: late}
	err = s.Add(ctx, person("cn=x,"+a.Suffix, "x", "x"))
	var ase *AllServersError
	if !errors.As(err, &ase) {
		t.Fatalf("err = %v, want an *AllServersError", err)
	}
	// Rounds of two attempts, 25 to 50 ms apart, for 300 ms: at most 13.
	if ase.Attempts > 26 {
		t.Fatalf("%d attempts in %v for a %v deadline with 50 ms backoff; want at most 26", ase.Attempts, ase.Elapsed, deadline)
	}
	if ase.Elapsed > deadline+200*time.Millisecond {
		t.Fatalf("returned after %v; want at the deadline (%v), not when the late context is done", ase.Elapsed, deadline)
	}
}
