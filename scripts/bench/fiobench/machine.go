package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"
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
		m.commit = strings.TrimSpace(output("git", "rev-parse", "--short", "HEAD"))
		// Other engineers share the checkout: say which files of the
		// binary's source differed from the commit.
		var dirty []string
		for _, l := range strings.Split(output("git", "status", "--porcelain", "--untracked-files=no"), "\n") {
			if len(l) > 3 {
				dirty = append(dirty, strings.TrimSpace(l[3:]))
			}
		}
		m.dirty = strings.Join(dirty, ", ")
	}
	cpuinfo, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(cpuinfo), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			m.model = strings.TrimSpace(v)
			break
		}
	}
	meminfo, _ := os.ReadFile("/proc/meminfo")
	var kb int64
	fmt.Sscanf(string(meminfo), "MemTotal: %d kB", &kb)
	m.mem = fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	m.kernel = strings.TrimSpace(string(kernel))
	m.tools = append(m.tools, firstLine(output("fio", "--version")))
	m.tools = append(m.tools, firstLine(output("qemu-storage-daemon", "--version")))
	for _, l := range strings.Split(output("/usr/sbin/slapd", "-VV"), "\n") {
		if i := strings.Index(l, "slapd "); i >= 0 && strings.Contains(l, "OpenLDAP") {
			m.tools = append(m.tools, "OpenLDAP "+strings.Fields(l[i:])[0]+" "+strings.Fields(l[i:])[1])
			break
		}
	}
	m.loadStart = loadavg()
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
	fmt.Fprintf(&sb, "Load average at start %s, at end %s.\n", m.loadStart, loadavg())
	return sb.String()
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func output(name string, args ...string) string {
	out, _ := exec.Command(name, args...).CombinedOutput()
	return string(out)
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
