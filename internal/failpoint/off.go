//go:build !failpoints

package failpoint

// Reached reports whether the point name fires now; without the build tag
// "failpoints" it never does.
func Reached(string) bool { return false }

// Crash kills the process if the point name fires now.
func Crash(string) {}

// Kill kills the process at point name.
func Kill(string) {}
