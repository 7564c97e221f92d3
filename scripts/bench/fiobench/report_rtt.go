package main

import (
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"time"
)

// rttName is config's name at round trip rtt (link.go).
func rttName(config, rtt string) string {
	if rtt == "0" {
		return config
	}
	return config + "@" + rtt
}

// rttTargetLoads and rttTarget are issue 19's: async keeps 0.9 of the passthrough at 10 ms and
// more, on these workloads.
var rttTargetLoads = []string{"4k-randwrite-qd16", "1m-seqwrite-qd4", "slapd-ldapadd"}

const rttTarget = 0.9

// rttMarkdown is the sweep's table: per workload and RTT, the medians of
// sync and async and their ratios to the passthrough, which has no link.
func (r report) rttMarkdown() string {
	if len(r.rtts) == 0 {
		return ""
	}
	var sb strings.Builder
	sb.WriteString("\nRTT sweep: medians (IOPS; entries/s for slapd) and ratios to the passthrough (a), which has no link:\n\n")
	sb.WriteString("| workload | RTT | (a) passthrough | (b) sync | (c) async | b/a | c/a | c/b |\n|---|---|---:|---:|---:|---:|---:|---:|\n")
	for _, w := range r.workloads {
		a := r.cell("passthrough", w.name)
		for _, rtt := range r.rtts {
			s, as := r.cell(rttName("sync", rtt), w.name), r.cell(rttName("async", rtt), w.name)
			fmt.Fprintf(&sb, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", w.label, rtt,
				figure(a), figure(s), figure(as), ratioOf(s, a), r.asyncRatio(as, a, w.name, rtt), ratioOf(as, s))
		}
	}
	sb.WriteString("\nTarget (issue 19): c/a ≥ 0.9 at 10 ms RTT and more on 4 KiB randwrite qd16, 1 MiB seqwrite and slapd adds.\n")
	if chart, err := r.rttChart("dumb size 100,30", ""); err == nil {
		sb.WriteString("\n```\n" + chart + "```\n")
	}
	return sb.String()
}

func figure(c cell) string {
	if c.n == 0 {
		return "—"
	}
	return fmt.Sprintf("%.0f", c.m.value())
}

func ratioOf(num, den cell) string {
	if num.n == 0 || den.n == 0 || den.m.value() == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f", num.m.value()/den.m.value())
}

func (r report) asyncRatio(as, a cell, load, rtt string) string {
	s := ratioOf(as, a)
	d, err := parseRTT(rtt)
	if s == "—" || err != nil || d < 10*time.Millisecond || !slices.Contains(rttTargetLoads, load) {
		return s
	}
	if as.m.value()/a.m.value() >= rttTarget {
		return s + " (met)"
	}
	return s + " (**not met**)"
}

// rttChart draws the ratios to the passthrough against the RTT, one line
// per mode and workload, with gnuplot's terminal term into out ("": the
// returned text).
func (r report) rttChart(term, out string) (string, error) {
	if _, err := exec.LookPath("gnuplot"); err != nil {
		return "", fmt.Errorf("needs gnuplot (apt-get install gnuplot-nox)")
	}
	var data strings.Builder
	var plots []string
	idx := 0
	for _, mode := range []string{"sync", "async"} {
		for _, w := range r.workloads {
			a := r.cell("passthrough", w.name)
			var rows []string
			for _, rtt := range r.rtts {
				d, _ := parseRTT(rtt)
				c := r.cell(rttName(mode, rtt), w.name)
				if c.n == 0 || a.n == 0 || a.m.value() == 0 {
					continue
				}
				rows = append(rows, fmt.Sprintf("%g %.4f", float64(d)/float64(time.Millisecond), c.m.value()/a.m.value()))
			}
			if len(rows) == 0 {
				continue
			}
			data.WriteString(strings.Join(rows, "\n") + "\ne\n")
			style := "lines dashtype 2"
			if mode == "async" {
				style = "lines lw 2"
			}
			plots = append(plots, fmt.Sprintf("'-' using 1:2 with %s title %q", style, mode+" "+w.label))
			idx++
		}
	}
	if idx == 0 {
		return "", fmt.Errorf("no figures to chart")
	}
	output := ""
	if out != "" {
		output = fmt.Sprintf("set output %q\n", out)
	}
	script := fmt.Sprintf(`set terminal %s
%sset title "ratio to the passthrough against the link's round trip (ms); %s, commit %s" noenhanced
set xlabel 'RTT ms'
set ylabel 'ratio to passthrough'
set yrange [0:1.3]
set key outside right noenhanced
set grid
set arrow from graph 0, first 0.9 to graph 1, first 0.9 nohead dashtype 3
plot %s
%s`, term, output, r.machine.date.Format("2006-01-02"), r.machine.commit, strings.Join(plots, ", "), data.String())
	cmd := exec.Command("gnuplot")
	cmd.Stdin = strings.NewReader(script)
	b, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("gnuplot: %v: %s", err, b)
	}
	return string(b), nil
}
