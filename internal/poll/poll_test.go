package poll

import (
	"runtime"
	"testing"
	"time"
)

func TestUntil(t *testing.T) {
	n := 0
	Until(t, 5*time.Second, "three checks", func() bool { n++; return n == 3 })
	if n != 3 {
		t.Fatalf("cond checked %d times, want 3", n)
	}
	// A condition that never holds fails the test at the deadline.
	var ft fakeT
	done := make(chan struct{})
	go func() {
		defer close(done)
		Until(&ft, 30*time.Millisecond, "nothing", func() bool { return false })
	}()
	<-done
	if !ft.failed {
		t.Fatal("Until returned without failing for a condition that never held")
	}
}

// fakeT records Fatalf and stops the goroutine, as testing.T does.
type fakeT struct {
	testing.TB
	failed bool
}

func (f *fakeT) Helper() {}
func (f *fakeT) Fatalf(string, ...any) {
	f.failed = true
	runtime.Goexit()
}
