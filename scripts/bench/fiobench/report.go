package main

import (
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

type report struct {
	abba        bool     // every second round in reverse order
	rtts        []string // the RTT sweep's round trips (link.go)
	link        string   // how the delayed link is made
	ioSize      string   // fio's burst size, if not time-based
	journalSize string   // async's journal, if not the default
	window      int      // the daemons' --window, if not the default
	configs     []string
	workloads   []workload
	results     []result
	rounds      int
	machine     machine
	wall        time.Duration
	runtime     time.Duration
	ramp        time.Duration
	sizeMiB     int64
	entries     int
}

var configLabels = map[string]string{
	"passthrough": "(a) passthrough",
	"sync":        "(b) ldmirror sync",
	"async":       "(c) ldmirror async",
	"qemu-quorum": "(d) qemu quorum",
	"raw":         "(e) raw O_DIRECT",
	"sync-noal":   "sync, activity log off",
	// (b) runs the data link inside TLS, the default since issue 15.
	"sync-plaintext": "(b′) sync, plaintext link",
}

func label(config string) string {
	base, rtt, _ := strings.Cut(config, "@")
	l := configLabels[base]
	if l == "" {
		l = base
	}
	if rtt != "" {
		l += ", RTT " + rtt
	}
	return l
}

// pair is a ratio of two configurations' medians.
type pair struct {
	name, desc string
	num, den   string
	chart      bool
}

var pairs = []pair{
	{"b/a", "sync / passthrough", "sync", "passthrough", true},
	{"c/a", "async / passthrough", "async", "passthrough", true},
	{"c/b", "async / sync", "async", "sync", false},
	{"b/d", "sync / qemu quorum", "sync", "qemu-quorum", true},
	{"a/e", "passthrough / raw file", "passthrough", "raw", false},
	{"sync / sync-noal", "activity log on / off", "sync", "sync-noal", false},
	{"b/b′", "TLS / plaintext link", "sync", "sync-plaintext", false},
}

// targets are issue 7's and issue 15's (what TLS may cost), by ratio and
// workload ("" for every workload).
var targets = map[[2]string]float64{
	{"b/b′", "4k-randwrite-qd16"}: 0.90,
	{"b/b′", "1m-seqwrite-qd4"}:   0.85,
	{"b/a", "4k-randwrite-qd16"}:  0.75,
	{"b/a", "1m-seqwrite-qd4"}:    0.85,
	{"b/a", "slapd-ldapadd"}:      0.8,
	{"c/a", ""}:                   0.9,
	{"c/b", "4k-randwrite-qd16"}:  1.0,
	{"c/b", "1m-seqwrite-qd4"}:    1.0,
	{"b/d", "4k-randwrite-qd16"}:  3,
	{"b/d", "1m-seqwrite-qd4"}:    4,
}

func target(p, w string) (float64, bool) {
	if t, ok := targets[[2]string{p, w}]; ok {
		return t, true
	}
	t, ok := targets[[2]string{p, ""}]
	return t, ok
}

// cell is the medians of one configuration and workload over its rounds.
type cell struct {
	m       result
	n       int     // rounds with a figure
	spread  float64 // (max-min)/median of value()
	cut     int     // rounds stopped at the time limit
	retried int     // rounds measured on a second setup
	skipped string  // set when no round has a figure
}

func (r report) cell(config, load string) cell {
	var c cell
	var iops, mbps, p50, p99, s50, s99, ent, val []float64
	for _, x := range r.results {
		if x.config != config || x.load != load {
			continue
		}
		if x.skipped != "" {
			c.skipped = x.skipped
			continue
		}
		iops, mbps = append(iops, x.IOPS), append(mbps, x.MBps)
		p50, p99 = append(p50, x.P50us), append(p99, x.P99us)
		s50, s99 = append(s50, x.SyncP50us), append(s99, x.SyncP99us)
		ent, val = append(ent, x.Entries), append(val, x.value())
		if x.cut {
			c.cut++
		}
		if strings.Contains(x.note, "retried") {
			c.retried++
		}
	}
	c.n = len(val)
	if c.n == 0 {
		return c
	}
	c.skipped = ""
	c.m = result{IOPS: median(iops), MBps: median(mbps), P50us: median(p50), P99us: median(p99),
		SyncP50us: median(s50), SyncP99us: median(s99), Entries: median(ent)}
	if v := c.m.value(); v > 0 {
		c.spread = (slices.Max(val) - slices.Min(val)) / v
	}
	return c
}

// ratio returns the ratio of p's medians for a workload, or why there is none.
func (r report) ratio(p pair, load string) (float64, string) {
	num, den := r.cell(p.num, load), r.cell(p.den, load)
	switch {
	case num.n == 0 && num.skipped != "":
		return 0, num.skipped
	case den.n == 0 && den.skipped != "":
		return 0, den.skipped
	case num.n == 0 || den.n == 0 || den.m.value() == 0:
		return 0, "no figure"
	}
	return num.m.value() / den.m.value(), ""
}

func (r report) activePairs(chartOnly bool) []pair {
	var ps []pair
	for _, p := range pairs {
		if slices.Contains(r.configs, p.num) && slices.Contains(r.configs, p.den) && (!chartOnly || p.chart) {
			ps = append(ps, p)
		}
	}
	return ps
}

func (r report) markdown() string {
	var sb strings.Builder
	sb.WriteString(r.machine.markdown(r.wall))
	order := make([]string, len(r.configs))
	for i, c := range r.configs {
		order[i] = label(c)
	}
	fmt.Fprintf(&sb, "Medians of %d rounds, configurations alternating in the order %s; %d MiB volumes; "+
		"fio libaio direct=1 on the device, %s; directory load: %d entries.\n\n",
		r.rounds, strings.Join(order, ", "), r.sizeMiB, r.fioDesc(), r.entries)
	if r.window > 0 {
		fmt.Fprintf(&sb, "Mirrored daemons: --window %d.\n\n", r.window)
	}
	if r.journalSize != "" {
		fmt.Fprintf(&sb, "Async: journal of %s on both hosts.\n\n", r.journalSize)
	}
	if len(r.rtts) > 0 {
		fmt.Fprintf(&sb, "Round trips %s: RTT 0 is the direct link on 127.0.0.1; the others go through %s.\n\n",
			strings.Join(r.rtts, ", "), r.link)
	}
	if r.abba {
		sb.WriteString("Every second round ran the configurations in reverse order (-abba).\n\n")
	}

	sb.WriteString("| workload | configuration | IOPS | MB/s | write p50 µs | write p99 µs | fsync p50 µs | fsync p99 µs | entries/s | spread |\n")
	sb.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, w := range r.workloads {
		for _, c := range r.configs {
			x := r.cell(c, w.name)
			fmt.Fprintf(&sb, "| %s | %s | ", w.label, label(c))
			switch {
			case x.n == 0:
				fmt.Fprintf(&sb, "%s | | | | | | | |\n", x.skipped)
				continue
			case w.slapd:
				fmt.Fprintf(&sb, " | | | | | | %.0f", x.m.Entries)
			default:
				fmt.Fprintf(&sb, "%.0f | %.1f | %.0f | %.0f | %s | %s | ", x.m.IOPS, x.m.MBps, x.m.P50us, x.m.P99us,
					optional(x.m.SyncP50us), optional(x.m.SyncP99us))
			}
			fmt.Fprintf(&sb, " | %.0f%%", 100*x.spread)
			if x.retried > 0 {
				fmt.Fprintf(&sb, " (%d retried on a fresh setup)", x.retried)
			}
			if x.cut > 0 {
				fmt.Fprintf(&sb, " (%d cut at the time limit)", x.cut)
			}
			if x.n < r.rounds {
				fmt.Fprintf(&sb, " (%d of %d rounds)", x.n, r.rounds)
			}
			sb.WriteString(" |\n")
		}
	}
	sb.WriteString("\nspread: (max − min) / median of the throughput over the rounds. " +
		"IOPS and MB/s of the 70/30 job are reads plus writes; latencies are of writes.\n")

	ps := r.activePairs(false)
	if len(ps) == 0 {
		return sb.String()
	}
	sb.WriteString("\nRatios of the medians (IOPS; entries/s for slapd), with the issues' targets:\n\n| workload |")
	for _, p := range ps {
		fmt.Fprintf(&sb, " %s (%s) |", p.name, p.desc)
	}
	sb.WriteString("\n|---|" + strings.Repeat("---:|", len(ps)) + "\n")
	for _, w := range r.workloads {
		fmt.Fprintf(&sb, "| %s |", w.label)
		for _, p := range ps {
			v, why := r.ratio(p, w.name)
			if why != "" {
				fmt.Fprintf(&sb, " %s |", why)
				continue
			}
			fmt.Fprintf(&sb, " %.2f", v)
			if t, ok := target(p.name, w.name); ok {
				verdict := "met"
				if v < t {
					verdict = "**not met**"
				}
				fmt.Fprintf(&sb, " (≥ %g: %s)", t, verdict)
			}
			sb.WriteString(" |")
		}
		sb.WriteString("\n")
	}
	return sb.String()
}

func (r report) fioDesc() string {
	if r.ioSize != "" {
		return fmt.Sprintf("%s per job, no ramp, at most %s", r.ioSize, r.runtime)
	}
	return fmt.Sprintf("%s after a %s ramp", r.runtime, r.ramp)
}

func optional(v float64) string {
	if v == 0 {
		return ""
	}
	return fmt.Sprintf("%.0f", v)
}

// csv is every round's figures.
func (r report) csv() string {
	var sb strings.Builder
	sb.WriteString("round,config,workload,iops,mb_per_s,write_p50_us,write_p99_us,fsync_p50_us,fsync_p99_us,entries_per_s,seconds,primary_cpu_us_per_op,secondary_cpu_us_per_op,note\n")
	for _, x := range r.results {
		fmt.Fprintf(&sb, "%d,%s,%s,%.1f,%.2f,%.1f,%.1f,%.1f,%.1f,%.1f,%.1f,%.1f,%.1f,%q\n", x.round, x.config, x.load,
			x.IOPS, x.MBps, x.P50us, x.P99us, x.SyncP50us, x.SyncP99us, x.Entries, x.elapsed.Seconds(), x.cpuUs[0], x.cpuUs[1],
			strings.ReplaceAll(strings.TrimSpace(x.skipped+" "+x.note), "\n", " "))
	}
	return sb.String()
}

// chart draws the charted ratios as clustered bars with gnuplot, on a log
// scale so that 0.25 and 4 sit equally far from parity.
func (r report) chart(png string) error {
	if _, err := exec.LookPath("gnuplot"); err != nil {
		return fmt.Errorf("needs gnuplot (apt-get install gnuplot-nox)")
	}
	var ps []pair
	var missing []string
	for _, p := range r.activePairs(true) {
		has := false
		for _, w := range r.workloads {
			if _, why := r.ratio(p, w.name); why == "" {
				has = true
			}
		}
		if has {
			ps = append(ps, p)
			continue
		}
		_, why := r.ratio(p, r.workloads[0].name)
		missing = append(missing, fmt.Sprintf("%s (%s): %s", p.name, p.desc, why))
	}
	if len(ps) == 0 {
		return fmt.Errorf("no ratio to chart with configurations %v", r.configs)
	}
	dir, err := os.MkdirTemp("", "fiobench-chart")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	// Columns: workload, targets, then one ratio per pair.
	var data strings.Builder
	lo, hi := 1.0, 1.0
	for _, w := range r.workloads {
		var ts []string
		for _, p := range ps {
			if t, ok := target(p.name, w.name); ok && p.name != "c/a" {
				ts = append(ts, fmt.Sprintf("%s ≥ %g", p.name, t))
			}
		}
		tline := ""
		if len(ts) > 0 {
			tline = "target " + strings.Join(ts, ", ")
		}
		fmt.Fprintf(&data, "%q %q", w.label, tline)
		for _, p := range ps {
			v, why := r.ratio(p, w.name)
			if why != "" || v <= 0 {
				data.WriteString(" ?")
				continue
			}
			lo, hi = math.Min(lo, v), math.Max(hi, v)
			fmt.Fprintf(&data, " %.6f", v)
		}
		data.WriteString("\n")
	}
	dat := filepath.Join(dir, "ratios.dat")
	if err := os.WriteFile(dat, []byte(data.String()), 0o644); err != nil {
		return err
	}
	k := len(ps)
	var plot []string
	for j, p := range ps {
		col := j + 3
		off := (float64(j) - float64(k-1)/2) / float64(k+1)
		src := "''"
		if j == 0 {
			src = fmt.Sprintf("%q", dat)
		}
		plot = append(plot, fmt.Sprintf("%s using %d:xtic(sprintf(\"%%s\\n%%s\", strcol(1), strcol(2))) title %q", src, col, p.name+" "+p.desc))
		plot = append(plot, fmt.Sprintf("'' using ($0%+.4f):%d:(sprintf('%%.2f', $%d)) with labels offset 0,0.7 font ',9' notitle", off, col, col))
	}
	title := fmt.Sprintf("ldmirror vs. baselines: ratios of medians of %d alternating rounds, %s, commit %s",
		r.rounds, r.machine.date.Format("2006-01-02"), r.machine.commit)
	title += "\\nissue 7 targets under each workload; c/a ≥ 0.9 on all"
	if len(missing) > 0 {
		title += "\\n" + strings.Join(missing, "; ")
	}
	script := fmt.Sprintf(`set terminal pngcairo size 1200,650 font ',10'
set output %q
set datafile missing '?'
set title "%s" noenhanced
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set bmargin 4
set xrange [-0.6:%d-0.4]
set logscale y 2
set yrange [%g:%g]
set ytics (0.125, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 8, 16, 32)
set ylabel 'ratio of medians (throughput; log scale)'
set grid ytics
set key top left noenhanced
set xtics font ',9' noenhanced
set arrow from graph 0, first 1 to graph 1, first 1 nohead dashtype 2 lw 1.5 lc rgb '#444444'
plot %s
`, png, title, len(r.workloads), math.Pow(2, math.Floor(math.Log2(lo))-0.3), math.Pow(2, math.Ceil(math.Log2(hi))+0.3),
		strings.Join(plot, ", \\\n  "))
	cmd := exec.Command("gnuplot")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("gnuplot: %v: %s", err, out)
	}
	return nil
}

func median(xs []float64) float64 {
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
