package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/internal/poll"
	"github.com/ldmirror/ldmirror/node"
	"github.com/ldmirror/ldmirror/volume"
)

// startWitnessIn runs `ldmirror witness` in dir under prefix (see
// startDaemonIn); it answers on dir/cluster.sock, not the daemons'
// control.sock.
func startWitnessIn(t *testing.T, prefix []string, dir string, args ...string) *exec.Cmd {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "witness.log"))
	if err != nil {
		t.Fatal(err)
	}
	argv := append(append(slices.Clone(prefix), binary, "witness", "--data-dir", dir), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("witness log:\n%s", b)
		}
	})
	return cmd
}

// clusterView is the part of `ldmirror cluster status --json` the test reads.
type clusterView struct {
	Leader string `json:"leader"` // "" while this member knows no leader
	Volume struct {
		Primary string `json:"primary"`
		Epoch   uint64 `json:"epoch"`
		Hosts   []struct {
			ID   string `json:"id"`
			Disk string `json:"disk"`
		} `json:"hosts"`
	} `json:"volume"`
}

// clusterState asks a daemon's control socket for the control plane's state.
func clusterState(t *testing.T, dir string) (clusterView, error) {
	t.Helper()
	var v clusterView
	out, err := exec.Command(binary, "cluster", "status", "--json", "--control", filepath.Join(dir, volume.ControlFile)).Output()
	if err != nil {
		return v, err
	}
	return v, json.Unmarshal(out, &v)
}

func (v clusterView) disk(id string) string {
	for _, h := range v.Volume.Hosts {
		if h.ID == id {
			return h.Disk
		}
	}
	return ""
}

// logLines counts the lines of the daemon log in dir that contain every one
// of parts.
func logLines(t *testing.T, dir string, parts ...string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "daemon.log"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for line := range strings.Lines(string(b)) {
		if !slices.ContainsFunc(parts, func(p string) bool { return !strings.Contains(line, p) }) {
			n++
		}
	}
	return n
}

// holdFor checks ok every 20 ms for d and fails the test at its first
// error: for what must hold over a window, such as "nothing acknowledged
// while suspended".
func holdFor(t *testing.T, d time.Duration, ok func() error) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if err := ok(); err != nil {
			t.Fatalf("within %v: %v", d, err)
		}
	}
}

// TestWitnessThenPeerDown is issue 5's scenario 3 on network namespaces:
// with W's link down, A and B are a quorum and replication goes on; with B's
// down too, A cannot mark B outdated, so it suspends I/O and acknowledges
// nothing until W is back; then the suspended write completes with B
// marked outdated, and B, back too, is resynced.
func TestWitnessThenPeerDown(t *testing.T) {
	requireE2E(t, "nsenter")
	tr := startTrio(t, "32MiB")
	lab, a, b := tr.lab, tr.dir["a"], tr.dir["b"]

	lab.LinkDown("w")
	// A read through the leader is a raft barrier: it commits only with a
	// quorum, here a and b.
	poll.Until(t, 20*time.Second, "a read through the raft leader, with w down", func() bool {
		return exec.Command(binary, "cluster", "status", "--consistent", "--timeout", "2s",
			"--control", filepath.Join(a, volume.ControlFile)).Run() == nil
	})
	writeBlocks(t, a, 0, 10)
	waitInSync(t, a, b)

	w := &recordWriter{first: 100, slots: 1024}
	stop := make(chan struct{})
	werr := make(chan error, 1)
	go func() { werr <- w.run(a, stop) }()
	poll.Until(t, 20*time.Second, "50 records acknowledged on a", func() bool { return w.ackedCount() >= 50 })
	lab.LinkDown("b")
	poll.Until(t, 20*time.Second, "a to suspend I/O", func() bool {
		st, err := status(a)
		return err == nil && st.Replication == node.ReplicationSuspended
	})
	suspendedAt := w.ackedCount()
	poll.Until(t, 10*time.Second, "a to know no raft leader", func() bool {
		v, err := clusterState(t, a)
		return err == nil && v.Leader == ""
	})
	// A write acknowledged on some timeout path would be within a few
	// --timeout: hold the cut that long, then bring w back.
	holdFor(t, 3*daemonTimeout, func() error {
		if n := w.ackedCount(); n != suspendedAt {
			return fmt.Errorf("a acknowledged %d writes while suspended, with neither b nor w reachable", n-suspendedAt)
		}
		st, err := status(a)
		v, cerr := clusterState(t, a)
		if err != nil || cerr != nil || st.Replication != node.ReplicationSuspended || v.Leader != "" {
			return fmt.Errorf("a alone: replication %q, raft leader %q (%v, %v); want suspended with no leader", st.Replication, v.Leader, err, cerr)
		}
		return nil
	})
	// The operator reads why in the log, not only in status.
	if logLines(t, a, "writes suspended: cannot mark the peer outdated without quorum") == 0 {
		t.Fatal("a's log does not say that its writes are suspended")
	}

	lab.LinkUp("w")
	poll.Until(t, 30*time.Second, "the suspended write to complete once w is back", func() bool { return w.ackedCount() > suspendedAt })
	// The commit went through the leader; a's own copy may lag it.
	poll.Until(t, 10*time.Second, "a's copy of the state to show b outdated", func() bool {
		v, err := clusterState(t, a)
		return err == nil && v.disk("b") == "outdated"
	})
	close(stop)
	if err := <-werr; err != nil {
		t.Fatalf("writer on a: %v", err)
	}

	lab.LinkUp("b")
	waitInSync(t, a, b)
	poll.Until(t, 20*time.Second, "b to be uptodate after the resync", func() bool {
		v, err := clusterState(t, a)
		return err == nil && v.disk("b") == "uptodate"
	})
	w.check(t, filepath.Join(b, "volume.img"))
}

// TestStalePrimaryRefused is issue 5's scenario 4 on network namespaces. A's
// raft traffic is cut (port 7400) while its replication link to B stays up,
// and B with W demotes A (epoch +1). A, still primary in the old epoch in
// its own eyes, holds writes in memory and keeps trying to ship them: B
// drops A's session and refuses every reconnection, so B's file does not
// change, and every write A acknowledged is on B. After the heal, with B
// promoted, A waits for its export to be released, turns secondary and is
// resynced from B.
//
// B drops the session within one poll (250 ms) of learning the new epoch;
// frames A sends before that are applied and acknowledged, which is safe:
// they are on B. The file is compared only from B's first refusal.
func TestStalePrimaryRefused(t *testing.T) {
	requireE2E(t, "nsenter")
	tr := startTrio(t, "32MiB")
	lab, a, b := tr.lab, tr.dir["a"], tr.dir["b"]
	raftPort, err := strconv.Atoi(clusterPort)
	if err != nil {
		t.Fatal(err)
	}
	before, err := clusterState(t, b)
	if err != nil {
		t.Fatal(err)
	}
	old := before.Volume.Epoch

	w := &recordWriter{first: 0, slots: 1024}
	stop := make(chan struct{})
	werr := make(chan error, 1)
	go func() { werr <- w.run(a, stop) }()
	poll.Until(t, 20*time.Second, "50 records acknowledged on a", func() bool { return w.ackedCount() >= 50 })

	lab.BlockPort("a", "b", raftPort)
	lab.BlockPort("a", "w", raftPort)
	// Demote a in the epoch it holds: a retry after a commit whose reply
	// was lost is refused, not applied twice.
	poll.Until(t, 20*time.Second, "b and w to demote a", func() bool {
		_ = exec.Command(binary, "demote", "a", "--epoch", strconv.FormatUint(old, 10),
			"--control", filepath.Join(b, volume.ControlFile)).Run()
		v, err := clusterState(t, b)
		return err == nil && v.Volume.Primary == "" && v.Volume.Epoch == old+1
	})
	atDemote := w.ackedCount()
	drop := []string{"dropping the replication session of a stale primary", "a is not the primary"}
	refusal := []string{`msg="peer connection rejected"`, "stale epoch: a is not the primary"}
	poll.Until(t, 10*time.Second, "b to drop a's session and refuse its reconnection", func() bool {
		return logLines(t, b, drop...) > 0 && logLines(t, b, refusal...) > 0
	})
	st, err := status(a)
	if err != nil {
		t.Fatal(err)
	}
	if st.Role != cluster.RolePrimary || st.Epoch != old || st.DirtyBlocks == 0 {
		t.Fatalf("a: %s in epoch %d with %d dirty blocks; want a stale primary of epoch %d holding writes b lacks",
			st.Role, st.Epoch, st.DirtyBlocks, old)
	}
	bSum, acked, refused := fileSHA256(t, filepath.Join(b, "volume.img")), w.ackedCount(), logLines(t, b, refusal...)
	t.Logf("a acknowledged %d writes between the demotion and b's refusal; it holds %d dirty blocks", acked-atDemote, st.DirtyBlocks)
	// a retries every 5 s after a refusal: wait for the next attempt.
	poll.Until(t, 20*time.Second, "a to try again and b to refuse it again", func() bool {
		return logLines(t, b, refusal...) > refused
	})
	if fileSHA256(t, filepath.Join(b, "volume.img")) != bSum {
		t.Fatal("b's volume changed after b refused the stale primary")
	}
	if n := w.ackedCount(); n != acked {
		t.Fatalf("the stale primary acknowledged %d writes after b refused it", n-acked)
	}
	if st, err := status(a); err != nil || st.Role != cluster.RolePrimary || st.Epoch != old || st.Replication != node.ReplicationSuspended {
		t.Fatalf("a: %+v (%v); want it still primary in epoch %d, suspended", st, err, old)
	}
	// No write a acknowledged is missing on b.
	w.check(t, filepath.Join(b, "volume.img"))

	if out, err := exec.Command(binary, "promote", "b", "--control", filepath.Join(b, volume.ControlFile)).CombinedOutput(); err != nil {
		t.Fatalf("promote b (uptodate: a never marked it outdated): %v %s", err, out)
	}
	poll.Until(t, 20*time.Second, "b to serve as primary", func() bool {
		st, err := status(b)
		return err == nil && st.Role == cluster.RolePrimary && st.Export != ""
	})
	writeBlocks(t, b, 2048, 64)
	// A reader keeps a's export busy, as a directory server would.
	held, err := os.Open(filepath.Join(a, volume.ExportDir, "volume"))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()

	lab.UnblockPort("a", "b", raftPort)
	lab.UnblockPort("a", "w", raftPort)
	select {
	case err := <-werr:
		if err == nil {
			t.Fatal("the writer on a stopped without an error")
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the write suspended on a did not fail within 30 s of the heal; a: %+v", statusJSON(t, a))
	}
	close(stop)
	if n := w.ackedCount(); n != acked {
		t.Fatalf("the stale primary acknowledged %d writes after b refused it", n-acked)
	}
	poll.Until(t, 10*time.Second, "a to say what its demotion waits for", func() bool {
		st, err := status(a)
		return err == nil && strings.Contains(st.Transition, "demoted: waiting for the export to be closed")
	})
	held.Close()
	poll.Until(t, 30*time.Second, "a to turn secondary", func() bool {
		st, err := status(a)
		return err == nil && st.Role == cluster.RoleSecondary
	})
	waitInSync(t, b, a)
	tr.waitServing("b", "a")
	w.check(t, filepath.Join(a, "volume.img"))
}

// TestPartitionBetweenDataHosts is issue 5's scenario 2 on network
// namespaces: only the A–B link is cut, both still reach W. A commits "B
// outdated" with W and goes on writing; B cannot be promoted; after the heal
// A resyncs B, which becomes uptodate again.
func TestPartitionBetweenDataHosts(t *testing.T) {
	requireE2E(t, "nsenter")
	tr := startTrio(t, "32MiB")
	lab, a, b := tr.lab, tr.dir["a"], tr.dir["b"]
	writeBlocks(t, a, 0, 10)
	waitInSync(t, a, b)

	lab.Partition("a", "b")
	w := &recordWriter{first: 100, slots: 10, limit: 10}
	werr := make(chan error, 1)
	go func() { werr <- w.run(a, nil) }()
	select {
	case err := <-werr:
		if err != nil {
			t.Fatalf("write on a after the A-B cut: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("writes on a did not complete within 30 s of the A-B cut (a reaches w: it should mark b outdated and go on); status %+v", statusJSON(t, a))
	}
	poll.Until(t, 10*time.Second, "b to be outdated", func() bool {
		v, err := clusterState(t, a)
		return err == nil && v.disk("b") == "outdated"
	})
	out, err := exec.Command(binary, "promote", "b", "--control", filepath.Join(b, volume.ControlFile)).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "uptodate") {
		t.Fatalf("promote b while outdated: %v %s; want a refusal saying b is not uptodate", err, out)
	}

	lab.Heal("a", "b")
	waitInSync(t, a, b)
	poll.Until(t, 20*time.Second, "b to be uptodate after the resync", func() bool {
		v, err := clusterState(t, a)
		return err == nil && v.disk("b") == "uptodate"
	})
	w.check(t, filepath.Join(b, "volume.img"))
}
