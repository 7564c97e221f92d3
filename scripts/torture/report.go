package main

import (
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"
)

// roundResult is what one round did and what the checker found.
type roundResult struct {
	N           int
	Spec        faultSpec
	P, Final    string
	MovedBy     string
	Acked, Lost int
	Bound       int // docs/journal.md's bound when a loss is allowed, else -1
	LossAllowed bool
	Holes       int           // writers whose records on the volume are no prefix of their writes
	Recovery    time.Duration // fault → a primary serves with its peer uptodate and replicating
	DiffBlocks  int
	GenMismatch bool // in sync by every other account, but the generations differed
	Refusals    int  // the primary refused its peer: resolved by discarding the peer
	Restarts    int  // the primary stayed without its running peer: the peer's daemon restarted
	// LateLost are lost writes acknowledged more than --timeout after the
	// primary lost its peer (async).
	LateLost int
	// SuspendedPartition: an a-b partition during which the primary,
	// still reaching the witness, acknowledged nothing.
	SuspendedPartition bool
	FsckFailed         bool
	// Crash is what became of a crash-point round's armed point.
	Crash crashOutcome
	// DiskFailed: the disk a disk-full round filled failed; StrayDisk: a
	// disk the round did not fill failed; Attached: attach-disk runs that
	// took a disk back.
	DiskFailed, StrayDisk bool
	Attached              int
	SplitBrains           []string
	StaleAcks             int // writes the deposed primary acknowledged after its successor served
	Failures, Notes       []string
	Aborted               bool
	writers               []writerVerdict
	samples               []sample
	lossNotes             []string
	boundNote             string
}

func (r *roundResult) fail(format string, args ...any) {
	r.Failures = append(r.Failures, fmt.Sprintf(format, args...))
}

// failed reports whether the checker found anything wrong in the round.
func (r *roundResult) failed() bool { return len(r.Failures) > 0 }

// line is the round's row of the campaign log.
func (r *roundResult) line() string {
	bound := "-"
	if r.Bound >= 0 {
		bound = fmt.Sprint(r.Bound)
	}
	verdict := "ok"
	if r.failed() {
		verdict = fmt.Sprintf("FAILED (%d)", len(r.Failures))
	}
	if r.Crash != "" {
		verdict += fmt.Sprintf(" (%s@%d %s)", r.Spec.Point, r.Spec.Hit, r.Crash)
	}
	return fmt.Sprintf("round %3d %-26s %s->%s acked %6d lost %5d bound %5s recovery %6.2f s  %s",
		r.N, r.Spec.Kind, r.P, r.Final, r.Acked, r.Lost, bound, r.Recovery.Seconds(), verdict)
}

// percentile is the nearest-rank p-th percentile of ds (sorted or not).
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(p/100*float64(len(s))+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// summary is the campaign's table.
type summary struct {
	Seed                     uint64
	Mode, Commit             string
	Rounds, Planned          int
	Elapsed                  time.Duration
	Faults                   map[string]int
	Acked, AckedRaw, AckedFS int
	AckedLDAP                int
	Lost, LostAllowedRounds  int
	BeyondBound, Holes       int
	Divergent, Fsck          int
	SplitBrain, StaleAcks    int
	GenMismatch              int
	Refusals, Restarts       int
	SuspendedPartitions      int
	LateLost, LateRounds     int
	DiskRounds, DiskFailed   int
	StrayDisks, Attached     int
	// Points counts the crash-point rounds by point and outcome.
	Points       map[string]map[crashOutcome]int
	Aborted      bool
	Recovery     []time.Duration
	FailedRounds []int
}

func summarize(results []*roundResult) summary {
	s := summary{Faults: map[string]int{}, Points: map[string]map[crashOutcome]int{}}
	for _, r := range results {
		s.Rounds++
		s.Faults[r.Spec.Kind]++
		if kindOf(r.Spec.Kind).action == "disk" {
			s.DiskRounds++
		}
		if r.DiskFailed {
			s.DiskFailed++
		}
		if r.StrayDisk {
			s.StrayDisks++
		}
		s.Attached += r.Attached
		if r.Crash != "" {
			if s.Points[r.Spec.Point] == nil {
				s.Points[r.Spec.Point] = map[crashOutcome]int{}
			}
			s.Points[r.Spec.Point][r.Crash]++
		}
		s.Acked += r.Acked
		for _, w := range r.writers {
			switch w.Name {
			case "raw", "grow":
				s.AckedRaw += w.Acked
			case "ldap":
				s.AckedLDAP += w.Acked
			default:
				s.AckedFS += w.Acked
			}
		}
		s.Lost += r.Lost
		if r.LossAllowed && r.Lost > 0 {
			s.LostAllowedRounds++
		}
		if r.Bound >= 0 && r.Lost > r.Bound {
			s.BeyondBound++
		}
		s.Holes += r.Holes
		if r.DiffBlocks > 0 {
			s.Divergent++
		}
		if r.FsckFailed {
			s.Fsck++
		}
		if r.GenMismatch {
			s.GenMismatch++
		}
		s.Refusals += r.Refusals
		s.Restarts += r.Restarts
		s.LateLost += r.LateLost
		if r.LateLost > 0 {
			s.LateRounds++
		}
		if r.SuspendedPartition {
			s.SuspendedPartitions++
		}
		s.SplitBrain += len(r.SplitBrains)
		if r.Spec.Kind != "" && r.StaleAcks > 0 {
			s.StaleAcks += r.StaleAcks
		}
		if r.Aborted {
			s.Aborted = true
		}
		if !r.Aborted {
			s.Recovery = append(s.Recovery, r.Recovery)
		}
		if r.failed() {
			s.FailedRounds = append(s.FailedRounds, r.N)
		}
	}
	return s
}

// write prints the table in Markdown, ready for docs/reliability.md.
func (s summary) write(w io.Writer, mode string) {
	kinds := make([]string, 0, len(s.Faults))
	for k := range s.Faults {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	var fk []string
	for _, k := range kinds {
		fk = append(fk, fmt.Sprintf("%s %d", k, s.Faults[k]))
	}
	sec := func(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }
	lost := fmt.Sprint(s.Lost)
	if mode == "async" {
		lost = fmt.Sprintf("%d (in %d rounds with a failover; %d rounds beyond the bound; %d writes in %d rounds acknowledged more than --timeout after the loss)",
			s.Lost, s.LostAllowedRounds, s.BeyondBound, s.LateLost, s.LateRounds)
	}
	var points []string
	reached, armed := 0, 0
	for _, p := range crashPoints() {
		m := s.Points[p.name]
		if m == nil {
			continue
		}
		n := m[crashReached] + m[crashNotReached] + m[crashElsewhere]
		reached += m[crashReached]
		armed += n
		e := fmt.Sprintf("%s %d/%d", p.name, m[crashReached], n)
		if m[crashElsewhere] > 0 {
			e += fmt.Sprintf(" (%d died elsewhere)", m[crashElsewhere])
		}
		points = append(points, e)
	}
	crashes := fmt.Sprintf("%d of %d", reached, armed)
	if len(points) > 0 {
		crashes += ": " + strings.Join(points, ", ")
	}
	rounds := fmt.Sprint(s.Rounds)
	if s.Aborted || s.Rounds < s.Planned {
		rounds = fmt.Sprintf("%d of %d (aborted)", s.Rounds, s.Planned)
	}
	rows := [][2]string{
		{"seed", fmt.Sprint(s.Seed)},
		{"mode", mode},
		{"commit", s.Commit},
		{"rounds", rounds},
		{"elapsed", s.Elapsed.Round(time.Second).String()},
		{"faults by kind", strings.Join(fk, ", ")},
		{"acknowledged writes", fmt.Sprintf("%d (raw %d, ext4 files %d, LDAP adds %d)", s.Acked, s.AckedRaw, s.AckedFS, s.AckedLDAP)},
		{"lost acknowledged writes", lost},
		{"writers whose records are no prefix", fmt.Sprint(s.Holes)},
		{"divergent volumes (rounds)", fmt.Sprint(s.Divergent)},
		{"e2fsck failures", fmt.Sprint(s.Fsck)},
		{"rounds ending in sync with different generations", fmt.Sprint(s.GenMismatch)},
		{"peer refused by the primary (resolved by resolve --discard-local)", fmt.Sprint(s.Refusals)},
		{"primary without its running peer for 20 s after the fault was undone (resolved by restarting the peer)", fmt.Sprint(s.Restarts)},
		{"two primaries in one epoch", fmt.Sprint(s.SplitBrain)},
		{"crash points reached (of those armed; not reached is no failure)", crashes},
		{"disks failed in disk-full rounds (of those rounds); attach-disk runs; disks failed in other rounds", fmt.Sprintf("%d of %d; %d; %d", s.DiskFailed, s.DiskRounds, s.Attached, s.StrayDisks)},
		{"a-b partitions in which the primary acknowledged nothing after the first 3 s (of all a-b partitions)", fmt.Sprintf("%d of %d", s.SuspendedPartitions, s.Faults["partition-ab"])},
		{"writes acknowledged by a deposed primary after its successor served", fmt.Sprint(s.StaleAcks)},
		{"recovery (fault to primary serving, peer uptodate) p50 / p99 / max",
			fmt.Sprintf("%s / %s / %s", sec(percentile(s.Recovery, 50)), sec(percentile(s.Recovery, 99)), sec(percentile(s.Recovery, 100)))},
		{"failed rounds", fmt.Sprint(s.FailedRounds)},
	}
	fmt.Fprintln(w, "| | |")
	fmt.Fprintln(w, "|---|---|")
	for _, r := range rows {
		fmt.Fprintf(w, "| %s | %s |\n", r[0], r[1])
	}
}
