package main

import (
	"fmt"
	"sync"
)

// owner is the campaign's netns.TB: what a test's testing.TB is to a lab.
// Fatalf and Skipf end the campaign by panicking with an abort, which main
// recovers to run the cleanups and print the seed; they must therefore be
// called on the campaign's goroutine, as lab methods must be in a test.
type owner struct {
	logf func(format string, args ...any)

	mu       sync.Mutex
	cleanups []func()
	errs     []string
}

// abort is the panic value of Fatalf and Skipf.
type abort struct {
	msg  string
	skip bool // the campaign cannot run here at all
}

func (a abort) Error() string { return a.msg }

// Helper does nothing: there is no test output to attribute lines in.
func (o *owner) Helper() {}

// Logf writes to the campaign log.
func (o *owner) Logf(format string, args ...any) { o.logf(format, args...) }

// Errorf logs and remembers an error without ending the campaign (the lab
// reports a failed Close this way).
func (o *owner) Errorf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	o.logf("error: %s", msg)
	o.mu.Lock()
	o.errs = append(o.errs, msg)
	o.mu.Unlock()
}

// Fatalf ends the campaign.
func (o *owner) Fatalf(format string, args ...any) {
	panic(abort{msg: fmt.Sprintf(format, args...)})
}

// Skipf ends the campaign because it cannot run on this machine.
func (o *owner) Skipf(format string, args ...any) {
	panic(abort{msg: fmt.Sprintf(format, args...), skip: true})
}

// Cleanup registers f to run when the campaign ends, last registered first.
func (o *owner) Cleanup(f func()) {
	o.mu.Lock()
	o.cleanups = append(o.cleanups, f)
	o.mu.Unlock()
}

// runCleanups runs and forgets the registered functions, last first.
func (o *owner) runCleanups() {
	for {
		o.mu.Lock()
		n := len(o.cleanups)
		if n == 0 {
			o.mu.Unlock()
			return
		}
		f := o.cleanups[n-1]
		o.cleanups = o.cleanups[:n-1]
		o.mu.Unlock()
		f()
	}
}

// errors returns what Errorf recorded.
func (o *owner) errors() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.errs...)
}
