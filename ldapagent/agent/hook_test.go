package agent

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/internal/poll"

	"github.com/ldmirror/ldmirror/internal/logbuf"
)

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func readPid(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// waitGone waits until pid no longer runs (gone, or a zombie waiting for
// a parent that is not ours).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	poll.Until(t, 10*time.Second, fmt.Sprintf("process %d to end", pid), func() bool {
		if err := syscall.Kill(pid, 0); err == syscall.ESRCH {
			return true
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return true
		}
		// pid (comm) S ...: the state follows the last ')'.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		return i > 0 && i+2 < len(s) && s[i+2] == 'Z'
	})
}

// TestHookTimeoutKillsProcessGroup: at its timeout, a hook and everything
// it started in its process group are killed, and the result says so.
func TestHookTimeoutKillsProcessGroup(t *testing.T) {
	pidFile := t.TempDir() + "/child"
	h := Hook{Name: "start-slapd", Command: `sleep 60 & echo $! > '` + pidFile + `'; echo waiting; wait`, Timeout: 300 * time.Millisecond}
	start := time.Now()
	r := runHook(context.Background(), discard(), SeqPromote, h, hookEnv{})
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("hook with a 300 ms timeout took %v", d)
	}
	if r.OK() || !r.TimedOut || r.ExitCode != -1 || r.Error != "killed after its timeout of 300ms" {
		t.Fatalf("result %+v", r)
	}
	if len(r.Tail) != 1 || r.Tail[0] != "waiting" {
		t.Fatalf("tail %q", r.Tail)
	}
	waitGone(t, readPid(pidFile))
}

// TestHookOutputAndEnv: output is logged line by line, the tail keeps the
// last lines, the environment carries the LDMIRROR_* variables, and the
// exit status is reported.
func TestHookOutputAndEnv(t *testing.T) {
	t.Setenv("LDMIRROR_TEST_INHERITED", "kept")
	var logs logbuf.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	h := Hook{Name: "mount", Timeout: 10 * time.Second, Command: `
		echo "$LDMIRROR_NODE $LDMIRROR_PEER $LDMIRROR_EPOCH $LDMIRROR_ROLE $LDMIRROR_EXPORT $LDMIRROR_DIR $LDMIRROR_SEQUENCE $LDMIRROR_HOOK $LDMIRROR_TEST_INHERITED"
		i=1; while [ $i -le 30 ]; do echo "line $i"; i=$((i+1)); done
		printf 'no newline' >&2
		exit 3`}
	env := hookEnv{node: "b", peer: "a", dir: "/var/lib/ldmirror", export: "/var/lib/ldmirror/export/volume", epoch: 7, role: cluster.RolePrimary}
	r := runHook(context.Background(), log, SeqPromote, h, env)
	if r.OK() || r.ExitCode != 3 || r.Error != "exit status 3" || r.TimedOut {
		t.Fatalf("result %+v", r)
	}
	if len(r.Tail) != tailLines || r.Tail[0] != "line 12" || r.Tail[tailLines-2] != "line 30" || r.Tail[tailLines-1] != "no newline" {
		t.Fatalf("tail %q", r.Tail)
	}
	out := logs.String()
	for _, want := range []string{
		`line="b a 7 primary /var/lib/ldmirror/export/volume /var/lib/ldmirror promote mount kept"`,
		`line="line 1"`, `line="no newline"`, `msg="hook failed" sequence=promote hook=mount`,
	} {
		if !strings.Contains(out, want) {
			t.Fatalf("log lacks %s:\n%s", want, out)
		}
	}
	err := &HookError{Result: r}
	if got := err.Error(); got != `promote hook "mount" failed: exit status 3: no newline` {
		t.Fatalf("error text %q", got)
	}
}

// TestHookLeavesOutputOpen: a hook that exits but leaves a background
// process holding its output succeeds after a bounded wait.
func TestHookLeavesOutputOpen(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out the output grace period")
	}
	pidFile := t.TempDir() + "/child"
	h := Hook{Name: "start-slapd", Command: `sleep 60 & echo $! > '` + pidFile + `'; echo started`, Timeout: 10 * time.Second}
	r := runHook(context.Background(), discard(), SeqPromote, h, hookEnv{})
	if !r.OK() || r.ExitCode != 0 || len(r.Tail) != 1 {
		t.Fatalf("result %+v", r)
	}
	if r.DurationMs > float64((hookWaitDelay + 3*time.Second).Milliseconds()) {
		t.Fatalf("took %.0f ms", r.DurationMs)
	}
	// The background process is not the hook's to kill.
	if err := syscall.Kill(readPid(pidFile), 0); err != nil {
		t.Fatalf("the hook's background process was killed: %v", err)
	}
	syscall.Kill(readPid(pidFile), syscall.SIGKILL)
}

// TestRunSequenceStops: a failing hook stops the sequence; so does stop.
func TestRunSequenceStops(t *testing.T) {
	hooks := []Hook{
		{Name: "one", Command: "true", Timeout: time.Second},
		{Name: "two", Command: "exit 1", Timeout: time.Second},
		{Name: "three", Command: "true", Timeout: time.Second},
	}
	res, stopped, err := runSequence(context.Background(), discard(), SeqDemote, hooks, hookEnv{}, nil)
	if len(res) != 2 || stopped || err == nil || err.(*HookError).Result.Name != "two" {
		t.Fatalf("results %+v stopped %t err %v", res, stopped, err)
	}
	n := 0
	res, stopped, err = runSequence(context.Background(), discard(), SeqDemote, hooks, hookEnv{}, func() bool { n++; return n > 1 })
	if len(res) != 1 || !stopped || err != nil {
		t.Fatalf("results %+v stopped %t err %v", res, stopped, err)
	}
}
