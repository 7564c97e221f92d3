// Package poll is how tests wait: for a condition, with a deadline, never
// for a fixed time.
package poll

import (
	"testing"
	"time"
)

// maxInterval bounds the time between two checks: short enough for unit
// tests, long enough not to load the machine when a check runs a command.
const maxInterval = 20 * time.Millisecond

// Until checks cond, sooner at first and then every 20 ms, until it holds,
// and fails the test if it does not within limit; what names the
// condition in the failure.
func Until(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	if !Wait(limit, cond) {
		t.Fatalf("timed out after %v waiting for %s", limit, what)
	}
}

// Wait is Until for a caller that says itself what it waited for: it
// reports whether cond held within limit.
func Wait(limit time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(limit)
	for interval := time.Millisecond; !cond(); interval = min(2*interval, maxInterval) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(interval)
	}
	return true
}
