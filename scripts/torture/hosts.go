package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/ldmirror/ldmirror/ctl"
	"github.com/ldmirror/ldmirror/internal/failpoint"
	"github.com/ldmirror/ldmirror/internal/netns"
	"github.com/ldmirror/ldmirror/node"
	"github.com/ldmirror/ldmirror/volume"
	"golang.org/x/sys/unix"
)

// The daemons' settings, as the end-to-end tests run them: short timeouts
// keep a round short, and --timeout is also the time docs/journal.md
// bounds an async primary's unshipped acknowledgements by.
const (
	daemonTimeout = time.Second
	raftTimeout   = "300ms"
	resyncRate    = "32MiB"
	dataPort      = "7789"
	raftPort      = "7400"
)

// dataHosts are the two hosts with a volume; "w" is the witness.
func dataHosts() [2]string { return [2]string{"a", "b"} }

// other is the data host that is not h.
func other(h string) string {
	if h == "a" {
		return "b"
	}
	return "a"
}

// proc is one run of a daemon or the witness.
type proc struct {
	host string
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	// logFrom is the size of the host's log when this run started: what
	// it logged is after it.
	logFrom int64
	// points are the crash points armed in this run ("" for none).
	points string
}

// hosts runs the witness and the two daemons of one volume in a lab's
// namespaces and owns their processes: Close kills and waits for them.
type hosts struct {
	lab     *netns.Lab
	bin     string
	dir     map[string]string // a, b: volume directory; w: witness data directory
	logDir  string            // one log per host, appended by every run
	creds   string            // pki directory: the certificates of a, b and w
	daemonX []string          // more daemon flags (mode, journal size)
	procs   map[string]*proc
	runs    map[string]int
	logf    func(format string, args ...any)
}

// newHosts creates sparse volumes (size each) in dirs["a"] and dirs["b"]
// (docs/operations.md, "A failing disk": a sparse backing file meets a
// full file system as ENOSPC), the witness's directory dirs["w"] and the
// certificates under root.
func newHosts(ctx context.Context, lab *netns.Lab, bin, root, logDir, size string, dirs map[string]string, daemonX []string, logf func(string, ...any)) (*hosts, error) {
	h := &hosts{lab: lab, bin: bin, logDir: logDir, daemonX: daemonX, procs: map[string]*proc{}, runs: map[string]int{}, logf: logf, dir: dirs}
	out, err := h.cli(ctx, 30*time.Second, "init", "--dir", h.dir["a"], "--size", size, "--sparse")
	if err != nil {
		return nil, err
	}
	id := regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`).FindString(out)
	if id == "" {
		return nil, fmt.Errorf("ldmirror init printed no volume uuid: %q", out)
	}
	if _, err := h.cli(ctx, 30*time.Second, "init", "--dir", h.dir["b"], "--size", size, "--volume-uuid", id, "--sparse"); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(h.dir["w"], 0o700); err != nil {
		return nil, err
	}
	h.creds = filepath.Join(root, "pki")
	for _, args := range [][]string{{"init"}, {"issue", "a"}, {"issue", "b"}, {"issue", "--witness", "w"}} {
		if _, err := h.cli(ctx, 30*time.Second, append([]string{"pki", args[0], "--dir", h.creds}, args[1:]...)...); err != nil {
			return nil, err
		}
	}
	return h, nil
}

func (h *hosts) addr(host, port string) string { return h.lab.Addr(host) + ":" + port }

// control is the control socket of host's daemon.
func (h *hosts) control(host string) string { return filepath.Join(h.dir[host], volume.ControlFile) }

// logPath is the log every run of host appends to.
func (h *hosts) logPath(host string) string { return filepath.Join(h.logDir, host+".log") }

// start starts host's daemon (a, b) or the witness (w); the witness's
// first run bootstraps the control plane.
func (h *hosts) start(ctx context.Context, host string, round int) error {
	return h.startArmed(ctx, host, round, "")
}

// startArmed is start with the crash points in points ("name@hit,...",
// docs/reliability.md "Crash points") armed in the daemon: the binary is
// built with -tags failpoints, and a run without points has none armed.
func (h *hosts) startArmed(ctx context.Context, host string, round int, points string) error {
	if p := h.procs[host]; p != nil {
		return fmt.Errorf("%s already runs (pid %d)", host, p.cmd.Process.Pid)
	}
	var args []string
	if host == "w" {
		args = []string{"witness", "--data-dir", h.dir["w"], "--node-id", "w", "--bind", h.addr("w", raftPort),
			"--tls-dir", h.creds, "--raft-timeout", raftTimeout}
		if h.runs["w"] == 0 {
			args = append(args, "--bootstrap")
		}
	} else {
		args = append([]string{"daemon", "--dir", h.dir[host], "--node-id", host,
			"--listen", h.addr(host, dataPort), "--peer", h.addr(other(host), dataPort),
			"--cluster-bind", h.addr(host, raftPort), "--cluster-join", h.addr("w", raftPort),
			"--tls-dir", h.creds, "--cluster-raft-timeout", raftTimeout, "--timeout", daemonTimeout.String(),
			"--resync-rate", resyncRate}, h.daemonX...)
	}
	logf, err := os.OpenFile(h.logPath(host), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close() // the child has its own descriptor
	var from int64
	if fi, err := logf.Stat(); err == nil {
		from = fi.Size()
	}
	h.runs[host]++
	armed := ""
	if points != "" {
		armed = failpoint.EnvVar + "=" + points + " "
	}
	fmt.Fprintf(logf, "=== torture: run %d of %s, round %d, %s: %s%s\n", h.runs[host], host, round,
		time.Now().Format(time.RFC3339Nano), armed, strings.Join(args, " "))
	// nsenter enters the network namespace only: the FUSE export must be
	// in this mount namespace, where the writers and mount(8) run.
	cmd := exec.Command("nsenter", append([]string{"--net=/run/netns/" + h.lab.NS(host), h.bin}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = slices.DeleteFunc(os.Environ(), func(v string) bool { return strings.HasPrefix(v, failpoint.EnvVar+"=") })
	if points != "" {
		cmd.Env = append(cmd.Env, failpoint.EnvVar+"="+points)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", host, err)
	}
	p := &proc{host: host, cmd: cmd, done: make(chan struct{}), logFrom: from, points: points}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	h.procs[host] = p
	if host == "w" {
		return nil // the daemons' joins wait for it
	}
	var exited bool
	err = waitFor(ctx, 20*time.Second, "the daemon on "+host+" to answer on its control socket", func() bool {
		select {
		case <-p.done: // an armed point may kill it at once
			exited = true
			return true
		default:
		}
		_, err := h.status(ctx, host)
		return err == nil
	})
	if exited && points == "" {
		return fmt.Errorf("the daemon on %s exited at its start (%v): see %s", host, p.cmd.ProcessState, h.logPath(host))
	}
	return err
}

// exited is closed when host's current process has exited (nil if none
// runs).
func (h *hosts) exited(host string) <-chan struct{} {
	if p := h.procs[host]; p != nil {
		return p.done
	}
	return nil
}

// runLog is what host's current (or last waited-for) process logged.
func (h *hosts) runLog(host string, p *proc) string {
	f, err := os.Open(h.logPath(host))
	if err != nil {
		return ""
	}
	defer f.Close()
	if _, err := f.Seek(p.logFrom, io.SeekStart); err != nil {
		return ""
	}
	b, _ := io.ReadAll(io.LimitReader(f, 64<<20))
	return string(b)
}

// kill sends SIGKILL to host's process and waits until it is gone.
func (h *hosts) kill(ctx context.Context, host string) error {
	p := h.procs[host]
	if p == nil {
		return nil
	}
	_ = p.cmd.Process.Kill()
	select {
	case <-p.done:
	case <-ctx.Done():
		return fmt.Errorf("%s did not exit after SIGKILL: %w", host, ctx.Err())
	}
	h.procs[host] = nil
	return nil
}

// stop sends SIGTERM to host's process and waits until it exited; one
// that does not exit within 30 s is killed.
func (h *hosts) stop(ctx context.Context, host string) error {
	p := h.procs[host]
	if p == nil {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(30 * time.Second)
	defer t.Stop()
	select {
	case <-p.done:
		h.procs[host] = nil
		return nil
	case <-t.C:
		h.logf("%s did not exit within 30 s of SIGTERM: killing it", host)
	case <-ctx.Done():
	}
	return h.kill(ctx, host)
}

// signal sends sig (SIGSTOP, SIGCONT) to host's process.
func (h *hosts) signal(host string, sig syscall.Signal) error {
	p := h.procs[host]
	if p == nil {
		return fmt.Errorf("%s does not run", host)
	}
	return p.cmd.Process.Signal(sig)
}

// Close kills every process and waits for them, then removes the dead
// FUSE mounts a killed primary leaves.
func (h *hosts) Close() {
	for _, host := range []string{"a", "b", "w"} {
		if p := h.procs[host]; p != nil {
			_ = p.cmd.Process.Signal(syscall.SIGCONT)
			_ = p.cmd.Process.Kill()
			<-p.done
			h.procs[host] = nil
		}
	}
	for _, host := range dataHosts() {
		_ = unix.Unmount(filepath.Join(h.dir[host], volume.ExportDir), unix.MNT_DETACH)
	}
}

// status asks host's daemon for its status, as `ldmirror status --json`
// does (the same request on the same socket, without a process per call).
func (h *hosts) status(ctx context.Context, host string) (node.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	return ctl.NewClient(h.control(host)).Status(ctx)
}

// clusterView is the part of `ldmirror cluster status --json` the runbook
// reads.
type clusterView struct {
	Leader string `json:"leader"`
	Volume struct {
		Primary string `json:"primary"`
		Epoch   uint64 `json:"epoch"`
		Hosts   []struct {
			ID   string `json:"id"`
			Disk string `json:"disk"`
		} `json:"hosts"`
	} `json:"volume"`
}

func (v clusterView) disk(id string) string {
	for _, h := range v.Volume.Hosts {
		if h.ID == id {
			return h.Disk
		}
	}
	return ""
}

// clusterStatus runs `ldmirror cluster status --json` against host's daemon.
func (h *hosts) clusterStatus(ctx context.Context, host string) (clusterView, error) {
	var v clusterView
	out, err := h.cli(ctx, 5*time.Second, "cluster", "status", "--json", "--control", h.control(host))
	if err != nil {
		return v, err
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return v, fmt.Errorf("cluster status of %s: %w", host, err)
	}
	return v, nil
}

// cli runs the ldmirror CLI, bounded by limit, and returns its stdout; the
// error carries its stderr.
func (h *hosts) cli(ctx context.Context, limit time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, h.bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("ldmirror %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// run runs a system command bounded by limit and returns its combined
// output.
func run(ctx context.Context, limit time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// waitFor checks cond every 20 ms until it holds; it fails when limit
// passed or ctx ended first.
func waitFor(ctx context.Context, limit time.Duration, what string, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("timed out after %v waiting for %s", limit, what)
			}
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-tick.C:
		}
	}
	return nil
}

// hold lets d pass (a fault's duration, drawn from the seeded RNG), or
// less if ctx ends.
func hold(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
