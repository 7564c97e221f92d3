package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/node"
)

// startWitness runs `ldmirror witness` in dir; it answers on
// dir/cluster.sock, not the daemons' control.sock.
func startWitness(t *testing.T, dir string, args ...string) *exec.Cmd {
	t.Helper()
	return startWitnessIn(t, nil, dir, args...)
}

// startWitnessIn is startWitness run under prefix (see startDaemonIn).
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
	out, err := exec.Command(binary, "cluster", "status", "--json", "--control", filepath.Join(dir, node.ControlFile)).Output()
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

// TestFencingWithWitness is issue 5's scenarios 3 and 4 on 127.0.0.1 with
// real processes: A (primary) and B (secondary) replicate and are raft
// voters with a witness W. With W down, A and B are a quorum and writes go
// on; with B down too, A cannot mark B outdated and its writes are suspended
// — none is acknowledged — until W returns. Then the control plane promotes
// B (forced) while A still runs: B drops A's session and refuses its old
// epoch, and A's writes fail instead of reaching B.
func TestFencingWithWitness(t *testing.T) {
	requireE2E(t)
	a, b, secret := pairDirs(t, "32MiB")
	w := filepath.Join(filepath.Dir(a), "w")
	pa, pb, pw, replA, replB := freePort(t), freePort(t), freePort(t), freePort(t), freePort(t)
	raft := []string{"--secret-file", secret, "--cluster-raft-timeout", "300ms"}
	wArgs := []string{"--node-id", "w", "--bind", pw, "--secret-file", secret, "--raft-timeout", "300ms"}
	startWitness(t, w, append(wArgs, "--bootstrap")...)
	bArgs := append([]string{"--node-id", "b", "--listen", replB, "--peer", replA, "--cluster-bind", pb, "--cluster-join", pw}, raft...)
	sec := startDaemon(t, b, bArgs...)
	aArgs := append([]string{"--node-id", "a", "--listen", replA, "--peer", replB, "--cluster-bind", pa, "--cluster-join", pw}, raft...)
	startDaemon(t, a, aArgs...)

	// A fresh cluster has no uptodate host: the first primary is forced,
	// like DRBD's first `primary --force`.
	waitFor(t, 20*time.Second, "the members to join and a to be promoted", func() bool {
		return exec.Command(binary, "promote", "a", "--force", "--reason", "initial sync source",
			"--control", filepath.Join(a, node.ControlFile)).Run() == nil
	})
	waitFor(t, 20*time.Second, "a to serve and connect, and b to be recorded uptodate", func() bool {
		st, err := status(a)
		v, cerr := clusterState(t, a)
		return err == nil && cerr == nil && st.Link == node.LinkConnected && st.Epoch == v.Volume.Epoch && v.disk("b") == "uptodate"
	})
	writeBlocks(t, a, 0, 10)
	waitInSync(t, a, b)

	// Scenario 3: W down; A and B are a quorum.
	wCmd := exec.Command("pkill", "-KILL", "-f", "witness --data-dir "+w)
	if out, err := wCmd.CombinedOutput(); err != nil {
		t.Fatalf("kill the witness: %v %s", err, out)
	}
	writeBlocks(t, a, 100, 10)
	waitInSync(t, a, b)

	// Then B down too: A must not acknowledge a write it cannot fence.
	sec.kill()
	<-sec.done
	acked := make(chan error, 1)
	go func() {
		f, err := os.OpenFile(filepath.Join(a, node.ExportDir, "volume"), os.O_WRONLY, 0)
		if err == nil {
			_, err = f.WriteAt(make([]byte, 4096), 200*blockSize)
			f.Close()
		}
		acked <- err
	}()
	waitFor(t, 20*time.Second, "a to suspend I/O", func() bool {
		st, err := status(a)
		return err == nil && st.Replication == "suspended"
	})
	// Suspended: nothing is acknowledged for as long as there is no quorum.
	select {
	case err := <-acked:
		t.Fatalf("a write was acknowledged (%v) without quorum to mark b outdated", err)
	case <-time.After(2 * time.Second):
	}
	startWitness(t, w, wArgs...)
	select {
	case err := <-acked:
		if err != nil {
			t.Fatalf("the suspended write failed after quorum returned: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the suspended write did not complete within 30 s of the witness's return")
	}
	// The commit went through the leader; a's own copy may lag it.
	waitFor(t, 10*time.Second, "a's copy of the state to show b outdated", func() bool {
		v, err := clusterState(t, a)
		return err == nil && v.disk("b") == "outdated"
	})

	// B returns, A resyncs it.
	startDaemon(t, b, bArgs...)
	waitInSync(t, a, b)
	waitFor(t, 20*time.Second, "b to be uptodate again", func() bool {
		v, err := clusterState(t, a)
		return err == nil && v.disk("b") == "uptodate"
	})

	// Scenario 4: the control plane makes B primary while A still runs with
	// the old epoch and a writer holds A's export open: B drops A and
	// refuses it, A's writes fail, and B's volume does not change.
	f, err := os.OpenFile(filepath.Join(a, node.ExportDir, "volume"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if out, err := exec.Command(binary, "promote", "b", "--force", "--reason", "test: a is stale",
		"--control", filepath.Join(b, node.ControlFile)).CombinedOutput(); err != nil {
		t.Fatalf("promote b: %v %s", err, out)
	}
	waitFor(t, 20*time.Second, "b to serve as primary", func() bool {
		st, err := status(b)
		return err == nil && st.Role == node.RolePrimary && st.Export != ""
	})
	bSum := fileSHA256(t, filepath.Join(b, "volume.img"))
	if _, err := f.WriteAt(make([]byte, 4096), 300*blockSize); err == nil {
		t.Fatal("the stale primary acknowledged a write")
	}
	if fileSHA256(t, filepath.Join(b, "volume.img")) != bSum {
		t.Fatal("b's volume changed after it was promoted away from a")
	}
	// A waits for the export to be released, then turns secondary.
	waitFor(t, 10*time.Second, "a to say what its demotion waits for", func() bool {
		st, err := status(a)
		return err == nil && strings.Contains(st.Transition, "demoted: waiting for the export to be closed")
	})
	f.Close()
	waitFor(t, 20*time.Second, "a to turn secondary", func() bool {
		st, err := status(a)
		return err == nil && st.Role == node.RoleSecondary
	})
	log, _ := os.ReadFile(filepath.Join(b, "daemon.log"))
	if !strings.Contains(string(log), "stale primary") {
		t.Fatalf("b did not log dropping the stale primary:\n%s", log)
	}
	// The new primary brings the old one up to date.
	waitInSync(t, b, a)
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
	done := make(chan struct{})
	go func() { defer close(done); writeBlocks(t, a, 100, 10) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatalf("writes on a did not complete within 30 s of the A-B cut (a reaches w: it should mark b outdated and go on); status %+v", statusJSON(t, a))
	}
	waitFor(t, 10*time.Second, "b to be outdated", func() bool {
		v, err := clusterState(t, a)
		return err == nil && v.disk("b") == "outdated"
	})
	out, err := exec.Command(binary, "promote", "b", "--control", filepath.Join(b, node.ControlFile)).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "uptodate") {
		t.Fatalf("promote b while outdated: %v %s; want a refusal saying b is not uptodate", err, out)
	}

	lab.Heal("a", "b")
	waitInSync(t, a, b)
	waitFor(t, 20*time.Second, "b to be uptodate after the resync", func() bool {
		v, err := clusterState(t, a)
		return err == nil && v.disk("b") == "uptodate"
	})
}
