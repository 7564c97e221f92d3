// Package benchenv holds what the benchmark commands under scripts/bench
// share: child processes they start and stop, their CPU time, and the
// description of the machine and source a run measured.
package benchenv

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Proc is a started child process.
type Proc struct {
	Cmd    *exec.Cmd
	exited chan struct{}
}

// Start starts a command with its output in logPath.
func Start(logPath, name string, args ...string) (*Proc, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Proc{Cmd: cmd, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.exited) }()
	return p, nil
}

// Exited is closed once the process has exited.
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// Running reports whether the process has not exited yet.
func (p *Proc) Running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// Stop sends SIGTERM and waits up to 30 s before SIGKILL. A nil Proc is
// a no-op.
func (p *Proc) Stop() {
	if p == nil {
		return
	}
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		_ = p.Cmd.Process.Kill()
		<-p.exited
	}
}

// CPU returns the CPU time (user and system) the process used so far.
func (p *Proc) CPU() time.Duration { return ProcessCPU(p.Cmd.Process.Pid) }

// ProcessCPU returns the CPU time (user and system) process pid used so
// far, 0 if it cannot be read.
func ProcessCPU(pid int) time.Duration {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command's closing parenthesis: utime and stime
	// are the 12th and 13th, in clock ticks (USER_HZ, 100).
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * time.Second / 100
}

// Output runs a command and returns its combined output, "" parts and
// all: a description missing a tool says so by its absence.
func Output(name string, args ...string) string {
	out, _ := exec.Command(name, args...).CombinedOutput()
	return string(out)
}

// LoadAvg is the 1, 5 and 15 minute load averages, "?" if unknown.
func LoadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// Source names the source a run measured: HEAD's short commit, and the
// files of the working tree that differ from it (other engineers share
// the checkout).
func Source() (commit, dirty string) {
	commit = strings.TrimSpace(Output("git", "rev-parse", "--short", "HEAD"))
	var files []string
	for _, l := range strings.Split(Output("git", "status", "--porcelain", "--untracked-files=no"), "\n") {
		if len(l) > 3 {
			files = append(files, strings.TrimSpace(l[3:]))
		}
	}
	return commit, strings.Join(files, ", ")
}

// CPUModel is the first CPU's model name from /proc/cpuinfo.
func CPUModel() string {
	cpuinfo, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(cpuinfo), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// Kernel is the running kernel's release.
func Kernel() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return strings.TrimSpace(string(b))
}

// SlapdVersion is "OpenLDAP slapd 2.x.y" of the slapd binary, or "".
func SlapdVersion(slapd string) string {
	for _, l := range strings.Split(Output(slapd, "-VV"), "\n") {
		if i := strings.Index(l, "slapd "); i >= 0 && strings.Contains(l, "OpenLDAP") {
			f := strings.Fields(l[i:])
			if len(f) >= 2 {
				return "OpenLDAP " + f[0] + " " + f[1]
			}
		}
	}
	return ""
}

// The directory of the benchmarks' slapd.
const (
	SlapdBinary = "/usr/sbin/slapd"
	Suffix      = "dc=example,dc=com"
	RootDN      = "cn=admin," + Suffix
	RootPW      = "secret"
)

// WriteSlapdConf writes conf, a slapd.conf for Suffix with its pid and args
// files in dir and the LMDB database in data (schemas core, cosine and
// inetorgperson; uid indexed, as in any directory searched by uid), with
// extra lines appended (e.g. "dbnosync").
func WriteSlapdConf(conf, dir, data string, extra ...string) error {
	var c bytes.Buffer
	for _, sch := range []string{"core", "cosine", "inetorgperson"} {
		fmt.Fprintf(&c, "include /etc/ldap/schema/%s.schema\n", sch)
	}
	fmt.Fprintf(&c, "pidfile %s\nargsfile %s\n", filepath.Join(dir, "slapd.pid"), filepath.Join(dir, "slapd.args"))
	c.WriteString("modulepath /usr/lib/ldap\nmoduleload back_mdb\nsizelimit unlimited\n")
	c.WriteString("database mdb\nmaxsize 1073741824\n")
	fmt.Fprintf(&c, "suffix %q\nrootdn %q\nrootpw %s\ndirectory %s\n", Suffix, RootDN, RootPW, data)
	c.WriteString("index objectClass eq\nindex uid eq\n")
	for _, l := range extra {
		c.WriteString(l + "\n")
	}
	return os.WriteFile(conf, c.Bytes(), 0o600)
}
