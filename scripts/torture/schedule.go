package main

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
)

// faultSpec is one round's entry of the schedule: what the nemesis does
// and with which parameters. Targets are roles at the round's start
// (primary, secondary), not host names, so that a replay hits the same
// roles.
type faultSpec struct {
	Round  int
	Kind   string
	Target string        // primary, secondary, witness, all, from>to (one way); "" for partition-ab and swap
	Lead   time.Duration // the writers run this long (after a warm-up) before the fault
	// React is how long the operator takes, in a failover kind, to notice
	// that the primary is gone and promote its peer.
	React time.Duration
	// Hold is how long the fault lasts (after the failover, if any)
	// before the operator undoes it: restarts, heals, continues.
	Hold time.Duration
	// Point and Hit are a crash-point round's failpoint and the hit of it
	// that kills the daemon (docs/reliability.md, "Crash points").
	Point string
	Hit   int
	// Down is how long a crash-point round's trigger keeps the secondary
	// down before it restarts it (the resync trigger).
	Down time.Duration
}

// failover reports whether the operator promotes the peer during the fault.
func (f faultSpec) failover() bool { return kindOf(f.Kind).react[1] > 0 }

func (f faultSpec) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "round %d: %s", f.Round, f.Kind)
	if f.Target != "" {
		fmt.Fprintf(&b, " target=%s", f.Target)
	}
	if f.Point != "" {
		fmt.Fprintf(&b, " point=%s@%d", f.Point, f.Hit)
		if f.Down > 0 {
			fmt.Fprintf(&b, " down=%v", f.Down)
		}
	}
	fmt.Fprintf(&b, " lead=%v", f.Lead)
	if f.failover() {
		fmt.Fprintf(&b, " react=%v", f.React)
	}
	fmt.Fprintf(&b, " hold=%v", f.Hold)
	return b.String()
}

// kind describes one kind of fault and the ranges its parameters are
// drawn from.
type kind struct {
	name    string
	action  string   // kill, partition, oneway, isolate, stop, swap, crash, disk, slapd
	targets []string // one is drawn
	react   [2]time.Duration
	hold    [2]time.Duration
	doc     string
}

// repertoire is the nemesis's kinds of fault. Every kind comes once in each
// cycle of len(repertoire()) rounds, in a seeded order, so that a short
// campaign covers them all. A new kind adds an action in faults.go and an
// entry here.
func repertoire() []kind {
	return []kind{
		{"kill-primary", "kill", []string{"primary"}, dur(0, 0), dur(0, 0),
			"kill -9 of the primary's daemon, restarted at once"},
		{"kill-primary-failover", "kill", []string{"primary"}, dur(200, 1500), dur(0, 3000),
			"kill -9 of the primary; the operator promotes the secondary (runbook: manual failover), then restarts the old primary"},
		{"kill-secondary", "kill", []string{"secondary"}, dur(0, 0), dur(0, 3000),
			"kill -9 of the secondary, restarted after the hold"},
		{"kill-witness", "kill", []string{"witness"}, dur(0, 0), dur(0, 3000),
			"kill -9 of the witness, restarted after the hold"},
		{"kill-all", "kill", []string{"all"}, dur(0, 0), dur(0, 2000),
			"kill -9 of both daemons and the witness, restarted after the hold (witness first)"},
		{"restart-delayed", "kill", []string{"primary", "secondary", "witness"}, dur(0, 0), dur(2000, 6000),
			"kill -9 of one process, restarted only after 2 to 6 s, no failover"},
		{"partition-ab", "partition", []string{""}, dur(0, 0), dur(500, 5000),
			"a and b drop each other's packets (both still reach w), healed after the hold"},
		{"partition-oneway", "oneway", []string{"primary>secondary", "secondary>primary", "primary>witness", "witness>primary"}, dur(0, 0), dur(500, 5000),
			"one host drops what another sends (nftables, one direction only), healed after the hold"},
		{"isolate-primary-failover", "isolate", []string{"primary"}, dur(1000, 2500), dur(0, 3000),
			"the primary's link down (cut from b and w); the operator promotes the secondary; the link comes back after the hold"},
		{"isolate-heal", "isolate", []string{"primary", "secondary", "witness"}, dur(0, 0), dur(200, 5000),
			"one host's link down for 0.2 to 5 s, no operator action"},
		{"stop-primary", "stop", []string{"primary"}, dur(0, 0), dur(200, 4000),
			"SIGSTOP of the primary's daemon for 0.2 to 4 s, then SIGCONT"},
		{"stop-primary-failover", "stop", []string{"primary"}, dur(500, 2000), dur(0, 2000),
			"SIGSTOP of the primary; the operator promotes the secondary; SIGCONT after the hold (the paused-primary case)"},
		{"swap", "swap", []string{""}, dur(0, 0), dur(0, 0),
			"the runbook's swap: stop the file system's writer, umount, detach, `ldmirror swap` while the raw writer writes"},
		{"crash-point", "crash", []string{""}, dur(0, 0), dur(0, 2000),
			"a daemon restarted with one crash point armed dies there (the writers, a peer loss, a resync or a swap lead it there); restarted unarmed after the hold"},
		{"disk-full-secondary", "disk", []string{"secondary"}, dur(0, 0), dur(500, 3000),
			"the secondary's file system filled, writes to blocks it has no space for: its disk fails (ENOSPC); the runbook frees the space and runs attach-disk"},
		{"disk-full-primary", "disk", []string{"primary"}, dur(0, 0), dur(500, 3000),
			"the primary's file system filled, writes to blocks it has no space for: its disk fails, it hands the role over; the runbook frees the space and runs attach-disk"},
		{"kill-slapd", "slapd", []string{"primary"}, dur(0, 0), dur(0, 3000),
			"kill -9 of slapd on the primary; the operator starts it again after the hold"},
	}
}

// dur is a range of durations given in milliseconds.
func dur(lo, hi int) [2]time.Duration {
	return [2]time.Duration{time.Duration(lo) * time.Millisecond, time.Duration(hi) * time.Millisecond}
}

func kindOf(name string) kind {
	for _, k := range repertoire() {
		if k.name == name {
			return k
		}
	}
	return kind{name: name}
}

// schedule returns the faults of rounds 1 to rounds for seed and mode (the
// crash points on the path differ), of the kinds named in only (all if
// empty). Round r depends only on seed, mode, only and r, so a shorter
// campaign is a prefix of a longer one with the same seed.
func schedule(seed uint64, rounds int, mode string, only []string) []faultSpec {
	out := make([]faultSpec, 0, rounds)
	kinds := repertoire()
	if len(only) > 0 {
		kinds = slices.DeleteFunc(kinds, func(k kind) bool { return !slices.Contains(only, k.name) })
	}
	var order []int
	for r := 1; r <= rounds; r++ {
		cycle := (r - 1) / len(kinds)
		if (r-1)%len(kinds) == 0 {
			order = rand.New(rand.NewPCG(seed, uint64(cycle)<<1|1)).Perm(len(kinds))
		}
		k := kinds[order[(r-1)%len(kinds)]]
		rng := rand.New(rand.NewPCG(seed, uint64(r)<<1))
		f := faultSpec{
			Round:  r,
			Kind:   k.name,
			Target: k.targets[rng.IntN(len(k.targets))],
			Lead:   draw(rng, dur(0, 1500)),
			React:  draw(rng, k.react),
			Hold:   draw(rng, k.hold),
		}
		if k.action == "crash" {
			pts := pointsFor(mode)
			p := pts[rng.IntN(len(pts))]
			f.Point, f.Target = p.name, p.target
			f.Hit = p.hits[0] + rng.IntN(p.hits[1]-p.hits[0]+1)
			if p.trigger == "resync" {
				f.Down = draw(rng, dur(1000, 3000))
			}
		}
		out = append(out, f)
	}
	return out
}

// draw picks a duration in [r[0], r[1]], to the millisecond.
func draw(rng *rand.Rand, r [2]time.Duration) time.Duration {
	span := int64((r[1] - r[0]) / time.Millisecond)
	if span <= 0 {
		return r[0]
	}
	return r[0] + time.Duration(rng.Int64N(span+1))*time.Millisecond
}
