package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/node"
)

// crashPoint is one of docs/reliability.md's crash points as the campaign
// arms it: the daemon that reaches it, what leads it there, and the hits
// the schedule draws from.
type crashPoint struct {
	name   string
	target string // primary or secondary: the role at the round's start
	// trigger is what the round does after the writers started: "" (the
	// writes reach the point), "peer-loss" (kill -9 of the secondary),
	// "resync" (the secondary killed and restarted after the spec's Down,
	// so that the primary resyncs it) or "swap" (`ldmirror swap` names the
	// armed secondary primary).
	trigger string
	hits    [2]int
	modes   []string // the modes whose write path has the point; nil: both
}

// crashPoints are the eight points of internal/failpoint. The write-path
// hits start at 500, past the writes of a round's warm-up; a point
// reached earlier still counts (the round goes on without the warm-up).
func crashPoints() []crashPoint {
	return []crashPoint{
		{"mirror-written-before-send", "primary", "", [2]int{500, 5000}, []string{"sync"}},
		{"mirror-acked-before-clear", "primary", "", [2]int{500, 5000}, []string{"sync"}},
		{"activitylog-torn-write", "primary", "", [2]int{1, 3}, nil},
		{"scoreboard-map-torn-write", "primary", "peer-loss", [2]int{1, 2}, nil},
		{"journal-appended-before-ship", "primary", "", [2]int{500, 5000}, []string{"async"}},
		{"resync-mid-extent", "primary", "resync", [2]int{1, 3}, nil},
		{"node-fenced-before-generation", "primary", "peer-loss", [2]int{1, 1}, nil},
		{"node-promoted-before-primary-term", "secondary", "swap", [2]int{1, 1}, nil},
	}
}

// pointsFor are the crash points on mode's path.
func pointsFor(mode string) []crashPoint {
	return slices.DeleteFunc(crashPoints(), func(p crashPoint) bool {
		return p.modes != nil && !slices.Contains(p.modes, mode)
	})
}

func pointNamed(name string) crashPoint {
	for _, p := range crashPoints() {
		if p.name == name {
			return p
		}
	}
	return crashPoint{name: name}
}

// crashLimit bounds the wait for an armed daemon to reach its point once
// the trigger is given. A point not reached by then is reported in the
// round's log; it is no failure of the product (a hit count the round's
// writes did not reach, an activity log whose extents all stayed hot, an
// async journal that caught up without a resync).
const crashLimit = 20 * time.Second

// crashOutcome is what became of a round's armed crash point.
type crashOutcome string

const (
	crashReached    crashOutcome = "reached"
	crashNotReached crashOutcome = "not reached"
	// crashElsewhere: the armed daemon exited, and its log does not say
	// it was killed at the point. A failure of the round.
	crashElsewhere crashOutcome = "exited elsewhere"
)

// crashFault restarts the target daemon with one crash point armed before
// the writers start (arm), gives the point's trigger and waits until the
// daemon died there (inject), and restarts it unarmed (undo), with
// whatever the trigger killed.
type crashFault struct {
	pt     crashPoint
	host   string
	killed []string // processes the trigger killed, restarted at undo
	// outcome is set once the daemon died or crashLimit passed.
	outcome crashOutcome
	detail  string
}

// arm stops the target daemon (SIGTERM: the operator's restart, nothing
// is lost) and starts it with the point armed, then waits until the pair
// is redundant again. A daemon that reaches its point meanwhile (a point
// its start passes) has crashed already: inject sees it.
func (f *crashFault) arm(ctx context.Context, r *roundRun) error {
	f.pt = pointNamed(r.spec.Point)
	f.host = r.hostsOf(f.pt.target)[0]
	points := fmt.Sprintf("%s@%d", r.spec.Point, r.spec.Hit)
	if err := r.c.h.stop(ctx, f.host); err != nil {
		return err
	}
	if err := r.c.h.startArmed(ctx, f.host, r.n, points); err != nil {
		return err
	}
	r.notef("restarted %s with crash point %s armed", f.host, points)
	dead := r.c.h.exited(f.host)
	var last string
	err := waitFor(ctx, 60*time.Second, r.P+" to serve with its peer uptodate after the armed restart", func() bool {
		select {
		case <-dead:
			return true
		default:
		}
		st, err := r.c.h.status(ctx, r.P)
		if err != nil {
			last = err.Error()
			return false
		}
		last = brief(st)
		return st.Role == cluster.RolePrimary && st.Export != "" && st.Link == node.LinkConnected && st.PeerDisk == cluster.DiskUpToDate
	})
	if err != nil {
		return fmt.Errorf("%w; last: %s", err, last)
	}
	return nil
}

// died reports whether the armed daemon has exited.
func (f *crashFault) died(r *roundRun) bool {
	select {
	case <-r.c.h.exited(f.host):
		return true
	default:
		return false
	}
}

// diedSoon reports whether the armed daemon exits within a few seconds:
// a step that failed because the daemon killed itself at its point
// returns before the daemon's exit is seen.
func (f *crashFault) diedSoon(ctx context.Context, r *roundRun) bool {
	return waitFor(ctx, 5*time.Second, f.host+" to exit", func() bool { return f.died(r) }) == nil
}

func (f *crashFault) inject(ctx context.Context, r *roundRun) error {
	if !f.died(r) {
		switch f.pt.trigger {
		case "peer-loss":
			if err := f.kill(ctx, r, r.S); err != nil {
				return err
			}
		case "resync":
			if err := f.kill(ctx, r, r.S); err != nil {
				return err
			}
			if err := hold(ctx, r.spec.Down); err != nil {
				return err
			}
			if err := r.c.h.start(ctx, r.S, r.n); err != nil {
				return fmt.Errorf("restart %s: %w", r.S, err)
			}
			f.killed = nil
			r.notef("restarted %s after %v: %s resyncs it", r.S, r.spec.Down, r.P)
		case "swap":
			if err := (swapFault{}).inject(ctx, r); err != nil {
				return err
			}
		}
	}
	select {
	case <-r.c.h.exited(f.host):
	case <-time.After(crashLimit):
	case <-ctx.Done():
		return ctx.Err()
	}
	r.injected = time.Now()
	p := r.c.h.procs[f.host]
	if !f.died(r) {
		f.outcome = crashNotReached
		r.notef("crash point %s@%d not reached by %s within %v (not a failure of the product): killing it to restart it unarmed",
			r.spec.Point, r.spec.Hit, f.host, crashLimit)
		return f.kill(ctx, r, f.host)
	}
	want := "failpoint " + r.spec.Point + ": killing the process"
	if strings.Contains(r.c.h.runLog(f.host, p), want) {
		f.outcome = crashReached
		r.notef("%s died at crash point %s@%d (%v)", f.host, r.spec.Point, r.spec.Hit, p.cmd.ProcessState)
	} else {
		f.outcome = crashElsewhere
		f.detail = fmt.Sprintf("%s armed with %s@%d exited (%v) and its log does not say %q: see %s",
			f.host, r.spec.Point, r.spec.Hit, p.cmd.ProcessState, want, r.c.h.logPath(f.host))
		r.notef("%s", f.detail)
	}
	// The daemon is gone; forget the process, so that undo starts it.
	if err := r.c.h.kill(ctx, f.host); err != nil {
		return err
	}
	f.killed = append(f.killed, f.host)
	return nil
}

// kill is kill -9 of host, restarted at undo.
func (f *crashFault) kill(ctx context.Context, r *roundRun, host string) error {
	if err := r.c.h.kill(ctx, host); err != nil {
		return err
	}
	if !slices.Contains(f.killed, host) {
		f.killed = append(f.killed, host)
	}
	r.notef("killed %s", host)
	return nil
}

// undo restarts, unarmed, the daemon that crashed and whatever the trigger
// killed, the target first.
func (f *crashFault) undo(ctx context.Context, r *roundRun) error {
	slices.SortStableFunc(f.killed, func(x, y string) int {
		switch {
		case x == f.host:
			return -1
		case y == f.host:
			return 1
		}
		return 0
	})
	for _, h := range f.killed {
		if err := r.c.h.start(ctx, h, r.n); err != nil {
			return fmt.Errorf("restart %s: %w", h, err)
		}
	}
	if len(f.killed) > 0 {
		r.notef("restarted %s unarmed", strings.Join(f.killed, ", "))
	}
	return nil
}
