//go:build failpoints

package failpoint

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// armed is read once from the environment: the process is the unit a
// failpoint kills, so its set of points is per process, not per object.
var armed = sync.OnceValue(func() *points {
	p, err := parse(os.Getenv(EnvVar))
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", EnvVar, err)
		os.Exit(2)
	}
	return p
})

// points counts the hits of each armed point.
type points struct {
	mu   sync.Mutex
	fire map[string]int // the hit that fires
	hits map[string]int
}

// parse reads "name[@N],...".
func parse(s string) (*points, error) {
	p := &points{fire: map[string]int{}, hits: map[string]int{}}
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		name, at, found := strings.Cut(f, "@")
		n := 1
		if found {
			var err error
			if n, err = strconv.Atoi(at); err != nil || n < 1 {
				return nil, fmt.Errorf("failpoint %q: the hit after @ must be a number from 1", f)
			}
		}
		p.fire[name] = n
	}
	return p, nil
}

// Reached counts a hit of point name and reports whether this hit fires:
// the caller then does what the crash must leave behind and calls Kill.
func Reached(name string) bool { return armed().reached(name) }

func (p *points) reached(name string) bool {
	if len(p.fire) == 0 {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	at, ok := p.fire[name]
	if !ok {
		return false
	}
	p.hits[name]++
	return p.hits[name] == at
}

// Crash kills the process if point name fires now.
func Crash(name string) {
	if Reached(name) {
		Kill(name)
	}
}

// Kill says which point fired and kills the process with SIGKILL: no
// deferred function, no Close, no flush runs, as in a crash.
func Kill(name string) {
	fmt.Fprintf(os.Stderr, "failpoint %s: killing the process\n", name)
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // the signal is delivered before this returns to the caller
}
