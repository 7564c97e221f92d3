package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/internal/poll"
	"github.com/ldmirror/ldmirror/volume"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/node"
)

// volumeState reads the control plane's state from the member of the daemon
// in dir: its own copy, which may lag the leader, or with consistent one
// read through the leader.
func volumeState(dir string, consistent bool) (cluster.VolumeState, error) {
	var st clusterStatusJSON
	args := []string{"cluster", "status", "--json", "--timeout", "2s", "--control", filepath.Join(dir, volume.ControlFile)}
	if consistent {
		args = append(args, "--consistent")
	}
	out, err := exec.Command(binary, args...).Output()
	if err == nil {
		err = json.Unmarshal(out, &st)
	}
	return st.Volume, err
}

// operate runs an operator command against the control socket of the daemon in
// dir and fails the test if it fails.
func operate(t *testing.T, dir string, args ...string) string {
	t.Helper()
	return ldmirror(t, append(args, "--control", filepath.Join(dir, volume.ControlFile))...)
}

// statusSampler records a daemon's status every 20 ms until stopped: what
// must never be seen even for an instant, such as a role it must not take.
type statusSampler struct {
	stop chan struct{}
	done chan struct{}

	mu          sync.Mutex
	samples     int
	bad         []string        // what the samples showed that check refused
	transitions map[string]bool // every transition status showed
}

func sampleStatus(dir string, check func(node.Status) error) *statusSampler {
	s := &statusSampler{stop: make(chan struct{}), done: make(chan struct{}), transitions: map[string]bool{}}
	go func() {
		defer close(s.done)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			if st, err := status(dir); err == nil { // not answering yet: nothing to check
				s.mu.Lock()
				s.samples++
				s.transitions[st.Transition] = true
				if err := check(st); err != nil {
					s.bad = append(s.bad, time.Now().Format("15:04:05.000")+" "+err.Error())
				}
				s.mu.Unlock()
			}
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// end stops sampling and returns the number of samples and the refused ones.
func (s *statusSampler) end() (int, []string) {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.samples, s.bad
}

// showed reports whether status showed transition in some sample.
func (s *statusSampler) showed(transition string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.transitions[transition]
}

// replicationFailures counts, in the log of the raft leader, its failed
// attempts to append entries to host since it last became leader.
func (tr *trio) replicationFailures(t *testing.T, leader, host string) int {
	t.Helper()
	path := filepath.Join(tr.dir[leader], "daemon.log")
	if leader == "w" {
		path = filepath.Join(tr.dir[leader], "witness.log")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for line := range strings.Lines(string(b)) {
		switch {
		case strings.Contains(line, `msg="entering leader state"`):
			n = 0
		case strings.Contains(line, `msg="failed to appendEntries to"`) && strings.Contains(line, "ID:"+host+" "):
			n++
		}
	}
	return n
}

// TestRestartOnStaleCopy is issue 13 (D3): a daemon restarted after the
// cluster moved on must not act on its own copy of the control plane while
// that copy replays old epochs. b was primary (its newest raft snapshot
// says so), is stopped, and a is demoted and promoted again several times;
// b restarts from that snapshot. From the restart until b is in sync with
// a, b's status never shows it primary, b neither starts a primary term nor
// drops a's session, a keeps its export (attach works right after b's
// restart) and its one session to b.
func TestRestartOnStaleCopy(t *testing.T) {
	requireE2E(t, "nsenter")
	tr := newTrio(t, "32MiB")
	a, b := tr.dir["a"], tr.dir["b"]
	// b snapshots after snapThreshold entries, so that its newest snapshot
	// can be made to name it primary: a restart then restores a state in
	// which b is primary of an epoch long gone.
	const snapThreshold = 16
	bFlags := []string{"--cluster-raft-snapshot-threshold", fmt.Sprint(snapThreshold), "--cluster-raft-snapshot-interval", "50ms"}
	tr.start("b", bFlags...)
	tr.start("a")
	tr.promoteFirst()
	tr.waitServing("a", "b")

	ldmirror(t, "swap", "--dir", a)
	tr.waitServing("b", "a")
	bState, err := volumeState(b, true)
	if err != nil || bState.Primary != "b" {
		t.Fatalf("b's state after the swap: %+v, %v; want b primary", bState, err)
	}
	// Promoting the primary again is a no-op entry: enough of them make b
	// snapshot while it is primary, at or after the entry that made it so.
	snaps := filepath.Join(b, "raft", cluster.SnapshotDir)
	noops := 0
	poll.Until(t, 30*time.Second, "b to snapshot a state that names it primary", func() bool {
		if idx := snapshotIndexes(snaps); len(idx) > 0 && idx[0] >= bState.EpochIndex {
			return true
		}
		if noops > 4*snapThreshold {
			t.Fatalf("b took no snapshot after %d entries (snapshots at %v)", noops, snapshotIndexes(snaps))
		}
		operate(t, b, "promote", "b")
		noops++
		return false
	})
	ldmirror(t, "swap", "--dir", b)
	tr.waitServing("a", "b")
	tr.daemon["b"].stop(t)

	// The cluster moves on while b is down: every demote and promote is a
	// new epoch.
	for range 4 {
		operate(t, a, "demote", "a")
		operate(t, a, "promote", "a")
	}
	now, err := volumeState(a, true)
	if err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 30*time.Second, "a to serve as primary again", func() bool {
		st, err := status(a)
		return err == nil && st.Role == cluster.RolePrimary && st.Export != "" && st.Epoch == uint64(now.Epoch)
	})
	// While b is down the raft leader doubles its wait after each failed
	// attempt to replicate to it (10 ms × 2^(n-2) after n failures), but
	// retries its heartbeats within 150 ms: once restarted, b learns the
	// leader, and can read through it, a second or more before its log
	// catches up. That is the window in which a restarted daemon acted on
	// its stale copy; wait until the leader has failed 10 times (2.56 s).
	const failures = 10
	poll.Until(t, 30*time.Second, fmt.Sprintf("the raft leader to fail %d times to replicate to b", failures), func() bool {
		v, err := clusterState(t, a)
		return err == nil && v.Leader != "" && tr.replicationFailures(t, v.Leader, "b") >= failures
	})
	t.Logf("b's newest snapshot (index %v) names it primary in epoch %d; the cluster is at epoch %d, index %d",
		snapshotIndexes(snaps), bState.Epoch, now.Epoch, now.Index)
	lostBefore, connectedBefore := logLines(t, a, "peer link lost"), logLines(t, a, `msg="peer connected"`)

	sampler := sampleStatus(b, func(st node.Status) error {
		if st.Role == cluster.RolePrimary {
			return fmt.Errorf("b is primary in epoch %d (the cluster is at %d): %s", st.Epoch, now.Epoch, st.Transition)
		}
		return nil
	})
	tr.start("b", bFlags...)
	// a's export stays up: attach works right after b's restart.
	ldmirror(t, "detach", strings.TrimSpace(ldmirror(t, "attach", "--dir", a)))
	waitInSync(t, a, b)
	samples, bad := sampler.end()
	t.Logf("%d samples of b's status from its restart until it was in sync", samples)
	if len(bad) > 0 {
		t.Errorf("b acted on its stale copy of the control plane after its restart (%d of %d samples):\n%s", len(bad), samples, strings.Join(bad, "\n"))
	}
	// Until its copy caught up, b said why it did not act yet.
	if wait := "waiting for the control plane to confirm who is primary"; !sampler.showed(wait) {
		t.Errorf("b's status never showed %q while its copy caught up", wait)
	}
	for _, msg := range []string{"primary ready", "dropping the replication session of a stale primary", "named primary: closing the session"} {
		if n := logLines(t, b, msg); n > 0 {
			t.Errorf("b's log after its restart has %d lines %q", n, msg)
		}
	}
	if n := logLines(t, a, "peer link lost") - lostBefore; n > 0 {
		t.Errorf("a lost its session to b %d times after b restarted", n)
	}
	if n := logLines(t, a, `msg="peer connected"`) - connectedBefore; n != 1 {
		t.Errorf("a connected to b %d times after b restarted; want once", n)
	}
	if st, err := status(b); err != nil || st.Role != cluster.RoleSecondary || st.Epoch != uint64(now.Epoch) {
		t.Errorf("b after it caught up: %+v, %v; want secondary in epoch %d", st, err, now.Epoch)
	}
}
