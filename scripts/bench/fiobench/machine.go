package main

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/ldmirror/ldmirror/scripts/bench/internal/benchenv"
)

// machine describes where and on what a run measured.
type machine struct {
	date               time.Time
	commit, dirty      string
	cpus               int
	model, mem, kernel string
	goVersion          string
	tools              []string // "fio-3.33", ...
	loadStart          string
}

// describeMachine describes this machine and the source measured: commit,
// or if empty HEAD and the working tree's uncommitted changes.
func describeMachine(commit string) machine {
	m := machine{date: time.Now().UTC(), cpus: runtime.NumCPU(), goVersion: runtime.Version(), commit: commit}
	if m.commit == "" {
		m.commit, m.dirty = benchenv.Source()
	}
	m.model = benchenv.CPUModel()
	meminfo, _ := os.ReadFile("/proc/meminfo")
	var kb int64
	fmt.Sscanf(string(meminfo), "MemTotal: %d kB", &kb)
	m.mem = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
	m.kernel = benchenv.Kernel()
	m.tools = append(m.tools, firstLine(benchenv.Output("fio", "--version")))
	m.tools = append(m.tools, firstLine(benchenv.Output("qemu-storage-daemon", "--version")))
	m.tools = append(m.tools, benchenv.SlapdVersion("/usr/sbin/slapd"))
	m.loadStart = benchenv.LoadAvg()
	return m
}

func (m machine) markdown(wall time.Duration) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "Measured %s on commit %s", m.date.Format("2006-01-02 15:04 MST"), m.commit)
	if m.dirty != "" {
		fmt.Fprintf(&sb, " (working tree; uncommitted changes in %s)", m.dirty)
	}
	fmt.Fprintf(&sb, ", wall time %s.\n", wall.Round(time.Second))
	fmt.Fprintf(&sb, "Machine: %d CPUs (%s), %s RAM, kernel %s; %s; %s.\n",
		m.cpus, m.model, m.mem, m.kernel, m.goVersion, strings.Join(nonEmpty(m.tools), ", "))
	fmt.Fprintf(&sb, "Load average at start %s, at end %s.\n", m.loadStart, benchenv.LoadAvg())
	return sb.String()
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return l
}

func nonEmpty(ss []string) []string {
	var out []string
	for _, s := range ss {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}
