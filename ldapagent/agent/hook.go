package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/ldmirror/ldmirror/cluster"
)

// Sequences, as named in logs, status and LDMIRROR_SEQUENCE.
const (
	SeqPromote    = "promote"
	SeqDemote     = "demote"
	SeqReadyCheck = "ready_check"
)

const (
	// tailLines is how many output lines of a hook status keeps.
	tailLines = 20
	// maxLine bounds one logged line; a longer one is split.
	maxLine = 1024
	// hookWaitDelay is how long a hook that exited may keep its output
	// open (a daemon it started in the background without closing it)
	// before the agent stops reading and counts the hook as finished.
	hookWaitDelay = 2 * time.Second
)

// HookResult is one run of a hook, as status shows it.
type HookResult struct {
	Sequence   string    `json:"sequence"`
	Name       string    `json:"name"`
	Started    time.Time `json:"started"`
	DurationMs float64   `json:"duration_ms"`
	// ExitCode is the command's exit status; -1 if it was killed or did
	// not start.
	ExitCode int `json:"exit_code"`
	// TimedOut: the hook ran past its timeout and its process group was
	// killed.
	TimedOut bool `json:"timed_out,omitempty"`
	// Error is empty on success.
	Error string `json:"error,omitempty"`
	// Tail is the last lines of its output (stdout and stderr merged).
	Tail []string `json:"tail,omitempty"`
}

// OK reports whether the hook succeeded.
func (r HookResult) OK() bool { return r.Error == "" }

// HookError is a hook that failed; it wraps ErrHookFailed.
type HookError struct {
	Result HookResult
}

func (e *HookError) Error() string {
	msg := fmt.Sprintf("%s hook %q failed: %s", e.Result.Sequence, e.Result.Name, e.Result.Error)
	if n := len(e.Result.Tail); n > 0 {
		msg += ": " + e.Result.Tail[n-1]
	}
	return msg
}

// Unwrap lets errors.Is(err, ErrHookFailed) match.
func (e *HookError) Unwrap() error { return ErrHookFailed }

// hookEnv is what a hook learns from its environment.
type hookEnv struct {
	node, peer, dir, export string
	epoch                   cluster.Epoch
	role                    cluster.Role // the role being entered
}

func (e hookEnv) vars(seq, name string) []string {
	return []string{
		"LDMIRROR_NODE=" + e.node,
		"LDMIRROR_PEER=" + e.peer,
		"LDMIRROR_EPOCH=" + strconv.FormatUint(uint64(e.epoch), 10),
		"LDMIRROR_ROLE=" + string(e.role),
		"LDMIRROR_EXPORT=" + e.export,
		"LDMIRROR_DIR=" + e.dir,
		"LDMIRROR_SEQUENCE=" + seq,
		"LDMIRROR_HOOK=" + name,
	}
}

// runHook runs h to completion, its timeout or the end of ctx, whichever
// comes first; in the last two cases its whole process group is killed.
// Its output is logged line by line.
func runHook(ctx context.Context, log *slog.Logger, seq string, h Hook, env hookEnv) HookResult {
	res := HookResult{Sequence: seq, Name: h.Name, Started: time.Now(), ExitCode: -1}
	hctx, cancel := context.WithTimeout(ctx, h.Timeout)
	defer cancel()
	out := &lineLog{log: log, seq: seq, hook: h.Name}
	cmd := exec.CommandContext(hctx, "/bin/sh", "-c", h.Command)
	cmd.Env = append(os.Environ(), env.vars(seq, h.Name)...)
	cmd.Stdout, cmd.Stderr = out, out
	// Own process group, so that a timeout kills what the hook started
	// too; a daemon that detaches (setsid, as slapd does) is not in it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = hookWaitDelay
	log.Info("hook starting", "sequence", seq, "hook", h.Name, "timeout", h.Timeout)
	err := cmd.Run()
	res.DurationMs = float64(time.Since(res.Started).Microseconds()) / 1000
	out.flush()
	res.Tail = out.tail()
	if cmd.ProcessState != nil {
		res.ExitCode = cmd.ProcessState.ExitCode()
	}
	switch {
	case hctx.Err() != nil && ctx.Err() == nil && (err != nil || res.ExitCode != 0):
		res.TimedOut = true
		res.Error = fmt.Sprintf("killed after its timeout of %v", h.Timeout)
	case ctx.Err() != nil && err != nil:
		res.Error = "killed: the agent is stopping"
	case errors.Is(err, exec.ErrWaitDelay) && res.ExitCode == 0:
		// It succeeded but left something holding its output open.
		log.Warn("hook exited but a process it started keeps its output open; no longer reading it",
			"sequence", seq, "hook", h.Name)
	case err != nil:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			res.Error = ee.ProcessState.String() // "exit status 1", "signal: killed"
		} else {
			res.Error = err.Error()
		}
	}
	if res.OK() {
		log.Info("hook done", "sequence", seq, "hook", h.Name, "ms", res.DurationMs)
	} else {
		log.Error("hook failed", "sequence", seq, "hook", h.Name, "ms", res.DurationMs, "err", res.Error)
	}
	return res
}

// runSequence runs hooks in order and stops at the first failure, which
// it returns as a *HookError, or before the next hook once stop returns
// true (stopped is then true).
func runSequence(ctx context.Context, log *slog.Logger, seq string, hooks []Hook, env hookEnv, stop func() bool) (results []HookResult, stopped bool, err error) {
	for _, h := range hooks {
		if stop != nil && stop() {
			return results, true, nil
		}
		r := runHook(ctx, log, seq, h, env)
		results = append(results, r)
		if !r.OK() {
			return results, false, &HookError{Result: r}
		}
	}
	return results, false, nil
}

// lineLog logs a hook's output line by line and keeps its tail.
type lineLog struct {
	log       *slog.Logger
	seq, hook string

	mu    sync.Mutex
	part  []byte
	lines []string // ring of the last tailLines lines
	next  int
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.part = append(l.part, p...)
	for {
		i := bytes.IndexByte(l.part, '\n')
		if i < 0 {
			break
		}
		l.emit(l.part[:i])
		l.part = l.part[i+1:]
	}
	for len(l.part) >= maxLine {
		l.emit(l.part[:maxLine])
		l.part = l.part[maxLine:]
	}
	l.part = append([]byte(nil), l.part...)
	return len(p), nil
}

func (l *lineLog) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.part) > 0 {
		l.emit(l.part)
		l.part = nil
	}
}

func (l *lineLog) emit(b []byte) {
	line := string(bytes.TrimRight(b, "\r"))
	if len(line) > maxLine {
		line = line[:maxLine]
	}
	l.log.Info("hook output", "sequence", l.seq, "hook", l.hook, "line", line)
	if len(l.lines) < tailLines {
		l.lines = append(l.lines, line)
	} else {
		l.lines[l.next] = line
	}
	l.next = (l.next + 1) % tailLines
}

func (l *lineLog) tail() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.lines) < tailLines {
		return append([]string(nil), l.lines...)
	}
	return append(append([]string(nil), l.lines[l.next:]...), l.lines[:l.next]...)
}
