package main

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/ldmirror/ldmirror/scripts/bench/internal/benchenv"
)

// Markers of the generated part of the retrier section in docs/benchmarks.md.
const (
	beginMarker = "<!-- scripts/bench/retrier: begin -->"
	endMarker   = "<!-- scripts/bench/retrier: end -->"
)

// targets are issue 18's: through the proxy, at least this fraction of
// direct throughput.
var targets = map[string]float64{"search-1": 0.75, "search-4": 0.85, "modify-4": 0.95, "add-4": 0.95}

// maxP50Overhead is issue 18's bound on the median latency the proxy adds
// to a search.
const maxP50Overhead = 200 * time.Microsecond

type machine struct {
	date          time.Time
	commit, dirty string
	cpus          int
	model, kernel string
	slapd, goVer  string
	loadStart     string
}

func describeMachine() machine {
	m := machine{date: time.Now().UTC(), cpus: runtime.NumCPU(), goVer: runtime.Version(), loadStart: benchenv.LoadAvg()}
	m.commit, m.dirty = benchenv.Source()
	m.model, m.kernel, m.slapd = benchenv.CPUModel(), benchenv.Kernel(), benchenv.SlapdVersion(slapdBinary)
	return m
}

// results collects the samples of a run.
type results struct {
	machine  machine
	rounds   int
	duration time.Duration
	wall     time.Duration
	nosync   bool
	loads    []workload
	samples  map[string][]sample // by load + " " + target
}

func (r *results) add(load, target string, s sample) {
	if r.samples == nil {
		r.samples = map[string][]sample{}
	}
	k := load + " " + target
	r.samples[k] = append(r.samples[k], s)
}

func median[T int64 | float64 | time.Duration](xs []T) T {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func field[T any](ss []sample, f func(sample) T) []T {
	out := make([]T, len(ss))
	for i, s := range ss {
		out[i] = f(s)
	}
	return out
}

func (r *results) markdown() string {
	var sb strings.Builder
	m := r.machine
	fmt.Fprintf(&sb, "Measured %s on commit %s", m.date.Format("2006-01-02 15:04 MST"), m.commit)
	if m.dirty != "" {
		fmt.Fprintf(&sb, " (working tree; uncommitted changes in %s)", m.dirty)
	}
	fmt.Fprintf(&sb, " with `go run ./scripts/bench/retrier`, wall time %s: %d rounds of %s per load and target, "+
		"direct and proxy alternating (ABBA).\n", r.wall.Round(time.Second), r.rounds, r.duration)
	fmt.Fprintf(&sb, "Machine: %d CPUs (%s), kernel %s, %s, %s", m.cpus, m.model, m.kernel, m.goVer, m.slapd)
	if r.nosync {
		sb.WriteString(" with dbnosync")
	} else {
		sb.WriteString(" with LMDB's fsync per write (ext4)")
	}
	fmt.Fprintf(&sb, ". Load average at start %s, at end %s (other engineers' runs share the machine).\n\n", m.loadStart, benchenv.LoadAvg())

	sb.WriteString("| load | target | ops/s | p50 µs | p99 µs | machine busy | slapd CPU µs/op | proxy CPU µs/op |\n")
	sb.WriteString("|---|---|---:|---:|---:|---:|---:|---:|\n")
	for _, w := range r.loads {
		for _, t := range []string{"direct", "proxy"} {
			ss := r.samples[w.name+" "+t]
			proxyCPU := ""
			if t == "proxy" {
				proxyCPU = fmt.Sprintf("%.0f", us(median(field(ss, func(s sample) time.Duration { return s.proxyCPU }))))
			}
			fmt.Fprintf(&sb, "| %s | %s | %.0f | %.0f | %.0f | %.0f%% | %.0f | %s |\n", w.label, t,
				median(field(ss, sample.rate)),
				us(median(field(ss, func(s sample) time.Duration { return s.p50 }))),
				us(median(field(ss, func(s sample) time.Duration { return s.p99 }))),
				100*median(field(ss, func(s sample) float64 { return s.busy })),
				us(median(field(ss, func(s sample) time.Duration { return s.slapdCPU }))), proxyCPU)
		}
	}
	sb.WriteString("\nThrough the proxy against direct, medians over the rounds of each round's ratio, with issue 18's targets:\n\n")
	sb.WriteString("| load | throughput proxy/direct | target | p50 added µs | target |\n|---|---:|---|---:|---|\n")
	for _, w := range r.loads {
		d, p := r.samples[w.name+" direct"], r.samples[w.name+" proxy"]
		var ratios []float64
		var added []time.Duration
		for i := range min(len(d), len(p)) {
			ratios = append(ratios, p[i].rate()/d[i].rate())
			added = append(added, p[i].p50-d[i].p50)
		}
		ratio, add := median(ratios), median(added)
		fmt.Fprintf(&sb, "| %s | %.2f | ≥ %.2f: %s | %.0f | ", w.label, ratio, targets[w.name], verdict(ratio >= targets[w.name]), us(add))
		if strings.HasPrefix(w.name, "search") {
			fmt.Fprintf(&sb, "≤ %.0f: %s |\n", us(maxP50Overhead), verdict(add <= maxP50Overhead))
		} else {
			sb.WriteString("— |\n")
		}
	}
	return sb.String()
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**not met**"
}

// replaceSection puts md between the markers in file.
func replaceSection(file, md string) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	s := string(b)
	i, j := strings.Index(s, beginMarker), strings.Index(s, endMarker)
	if i < 0 || j < i {
		return fmt.Errorf("%s has no %q … %q section", file, beginMarker, endMarker)
	}
	s = s[:i+len(beginMarker)] + "\n" + md + s[j:]
	return os.WriteFile(file, []byte(s), 0o644)
}
