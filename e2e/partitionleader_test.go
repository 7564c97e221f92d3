package e2e

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/internal/poll"
	"github.com/ldmirror/ldmirror/volume"
)

// TestPartitionBetweenDataHostsLeaderOnB is TestPartitionBetweenDataHosts
// with the raft leader on the secondary, docs/reliability.md's finding 3:
// a, primary, reaches neither b's data link nor the leader, and w, which
// still hears b, refuses to elect a. a's "b outdated" goes to b through a
// tunnel w relays (docs/cluster.md, "Security of the cluster port"), so
// a's writes go on within a few --timeout of the cut, and b, outdated, is
// not promotable. After the heal b is resynced and holds every write a
// acknowledged.
func TestPartitionBetweenDataHostsLeaderOnB(t *testing.T) {
	requireE2E(t, "nsenter")
	tr := startTrio(t, "32MiB")
	lab, a, b, wdir := tr.lab, tr.dir["a"], tr.dir["b"], tr.dir["w"]

	// Move the raft leadership to b: a's cluster port cut off until b and
	// w elected b (a witness that leads hands leadership to a data host
	// that answers, here b), then back, a following b.
	lab.BlockPort("a", "b", 7400)
	lab.BlockPort("a", "w", 7400)
	poll.Until(t, 30*time.Second, "b to lead raft", func() bool {
		v, err := clusterState(t, b)
		return err == nil && v.Leader == "b"
	})
	lab.UnblockPort("a", "b", 7400)
	lab.UnblockPort("a", "w", 7400)
	poll.Until(t, 30*time.Second, "a to follow b", func() bool {
		v, err := clusterState(t, a)
		return err == nil && v.Leader == "b"
	})
	tr.waitServing("a", "b")

	w := &recordWriter{first: 100, slots: 50}
	stop := make(chan struct{})
	werr := make(chan error, 1)
	go func() { werr <- w.run(a, stop) }()
	poll.Until(t, 10*time.Second, "a to acknowledge writes", func() bool { return w.ackedCount() >= 20 })

	lab.Partition("a", "b")
	cut := time.Now()
	before := w.ackedCount()
	// No write is acknowledged without b's ack until "b outdated" commits,
	// which takes the session's --timeout and then one commit through w.
	const within = 5 * daemonTimeout
	poll.Until(t, within+5*time.Second, "a's writes to go on after the cut", func() bool {
		select {
		case err := <-werr:
			t.Fatalf("write on a after the a-b cut: %v", err)
		default:
		}
		return w.ackedCount() >= before+20
	})
	if took := time.Since(cut); took > within {
		t.Fatalf("a's writes went on %v after the cut; want within %v (the session's timeout is %v)", took, within, daemonTimeout)
	}
	t.Logf("a's writes went on %v after the cut", time.Since(cut).Round(time.Millisecond))
	poll.Until(t, 5*time.Second, "w to apply b outdated", func() bool {
		v, err := clusterState(t, wdir)
		return err == nil && v.disk("b") == "outdated"
	})
	v, err := clusterState(t, wdir)
	if err != nil {
		t.Fatal(err)
	}
	if v.Leader != "b" || v.Volume.Primary != "a" {
		t.Fatalf("w's view: leader %q, primary %q; want b leading and a primary", v.Leader, v.Volume.Primary)
	}
	if n := logLines(t, a, "peer marked outdated", "peer=b"); n != 1 {
		t.Fatalf("a marked b outdated %d times, want once", n)
	}
	out, err := exec.Command(binary, "promote", "b", "--control", filepath.Join(b, volume.ControlFile)).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "uptodate") {
		t.Fatalf("promote b while outdated: %v %s; want a refusal saying b is not uptodate", err, out)
	}
	if n := logLines(t, a, "writes suspended"); n > 0 {
		t.Logf("a suspended its writes %d times (no quorum at the first attempt)", n)
	}

	lab.Heal("a", "b")
	close(stop)
	if err := <-werr; err != nil {
		t.Fatalf("write on a: %v", err)
	}
	waitInSync(t, a, b)
	poll.Until(t, 20*time.Second, "b to be uptodate after the resync", func() bool {
		v, err := clusterState(t, a)
		return err == nil && v.disk("b") == "uptodate"
	})
	w.check(t, filepath.Join(b, "volume.img"))
}
