package e2e

import (
	"bytes"
	"crypto/sha256"
	be "encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/internal/poll"
	"github.com/ldmirror/ldmirror/volume"

	"github.com/ldmirror/ldmirror/internal/netns"
	"github.com/ldmirror/ldmirror/node"
)

// daemonTimeout is the data hosts' --timeout: how long a primary waits for
// an ack before it counts its peer as lost.
const daemonTimeout = time.Second

// trio is issue 5's three hosts on network namespaces: data hosts a and b,
// witness w, each daemon in its own namespace and following the control
// plane.
type trio struct {
	t      *testing.T
	lab    *netns.Lab
	dir    map[string]string // volume (or witness data) directory per host
	creds  string            // pki directory with a's, b's and w's certificates
	extra  []string          // more daemon flags, for every data host
	daemon map[string]*daemon
}

// startTrio creates the namespaces and volumes, starts w, b and a, forces
// a primary (a fresh pair has no uptodate host) and waits until b is
// uptodate.
func startTrio(t *testing.T, size string, extra ...string) *trio {
	t.Helper()
	tr := newTrio(t, size, extra...)
	tr.start("b")
	tr.start("a")
	tr.promoteFirst()
	tr.waitServing("a", "b")
	return tr
}

// newTrio creates the namespaces (and c, a client host) and the volumes,
// and starts the witness.
func newTrio(t *testing.T, size string, extra ...string) *trio {
	t.Helper()
	lab := netns.NewLab(t, "a", "b", "w", "c")
	a, b, creds := pairDirs(t, size)
	tr := &trio{t: t, lab: lab, creds: creds, extra: extra, daemon: map[string]*daemon{},
		dir: map[string]string{"a": a, "b": b, "w": filepath.Join(filepath.Dir(a), "w")}}
	startWitnessIn(t, tr.in("w"), tr.dir["w"], "--node-id", "w", "--bind", tr.port("w", "7400"), "--tls-dir", creds,
		"--raft-timeout", "300ms", "--bootstrap")
	return tr
}

// promoteFirst makes a the first primary: forced, since a fresh pair has
// no uptodate host.
func (tr *trio) promoteFirst() {
	tr.t.Helper()
	poll.Until(tr.t, 20*time.Second, "the members to join and a to be promoted", func() bool {
		return exec.Command(binary, "promote", "a", "--force", "--reason", "initial sync source",
			"--control", filepath.Join(tr.dir["a"], volume.ControlFile)).Run() == nil
	})
}

// in is the command prefix that runs a command in host's namespace.
func (tr *trio) in(host string) []string {
	return []string{"nsenter", "--net=/run/netns/" + tr.lab.NS(host)}
}

func (tr *trio) port(host, p string) string { return tr.lab.Addr(host) + ":" + p }

// start (re)starts host's daemon.
func (tr *trio) start(host string, more ...string) *daemon { return tr.startArmed(host, "", more...) }

// startArmed is start with the crash points in points armed (see armed).
func (tr *trio) startArmed(host, points string, more ...string) *daemon {
	peer := map[string]string{"a": "b", "b": "a"}[host]
	args := append([]string{"--node-id", host, "--listen", tr.port(host, "7789"), "--peer", tr.port(peer, "7789"),
		"--cluster-bind", tr.port(host, "7400"), "--cluster-join", tr.port("w", "7400"),
		"--tls-dir", tr.creds, "--cluster-raft-timeout", "300ms", "--timeout", daemonTimeout.String()}, tr.extra...)
	args = append(args, more...)
	d := startDaemonIn(tr.t, append(armed(points), tr.in(host)...), tr.dir[host], args...)
	tr.daemon[host] = d
	return d
}

// waitServing waits until primary serves its export, replicates to
// secondary, and the control plane records secondary uptodate.
func (tr *trio) waitServing(primary, secondary string) {
	tr.t.Helper()
	poll.Until(tr.t, 30*time.Second, primary+" to serve and "+secondary+" to be uptodate", func() bool {
		st, err := status(tr.dir[primary])
		v, cerr := clusterState(tr.t, tr.dir[primary])
		return err == nil && cerr == nil && st.Role == cluster.RolePrimary && st.Export != "" &&
			st.Link == node.LinkConnected && v.disk(secondary) == "uptodate"
	})
}

// record is the content of record k: its number and a hash of it, so that a
// block read back names the record it holds and proves it intact.
func record(k int) []byte {
	b := make([]byte, blockSize)
	be.BigEndian.PutUint64(b, uint64(k))
	seed := sha256.Sum256(b[:8])
	for i := 8; i < len(b); i += len(seed) {
		copy(b[i:], seed[:])
	}
	return b
}

// recordWriter writes records 0, 1, 2... through a primary's export, record
// k to block first+k%slots, and remembers which writes were acknowledged.
type recordWriter struct {
	first, slots int
	limit        int // run stops after record limit-1; 0: no limit

	mu    sync.Mutex
	acked []int // record numbers whose write returned success, in order
	next  int   // the next record to write
}

func (w *recordWriter) ackedCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

// run writes records to the export under dir until stop is closed, the
// limit is reached or a write fails; it returns the failure (nil if
// stopped). It reports through its result, not t, so that it can run off
// the test's goroutine.
func (w *recordWriter) run(dir string, stop <-chan struct{}) error {
	f, err := os.OpenFile(filepath.Join(dir, volume.ExportDir, "volume"), os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	for {
		select {
		case <-stop:
			return nil
		default:
		}
		w.mu.Lock()
		k := w.next
		w.mu.Unlock()
		if w.limit > 0 && k >= w.limit {
			return nil
		}
		if _, err := f.WriteAt(record(k), int64(w.first+k%w.slots)*blockSize); err != nil {
			return err
		}
		w.mu.Lock()
		w.acked = append(w.acked, k)
		w.next = k + 1
		w.mu.Unlock()
	}
}

// check verifies that the volume file at path holds, in every slot, the
// last acknowledged record for it: no acknowledged write lost, none
// overwritten by an older one. The slot of the write in flight (or failed)
// may hold that record instead: a peer can apply a write whose ack is lost.
func (w *recordWriter) check(t *testing.T, path string) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	last := map[int]int{}
	for _, k := range w.acked {
		last[k%w.slots] = k
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := make([]byte, blockSize)
	for slot, k := range last {
		if _, err := f.ReadAt(got, int64(w.first+slot)*blockSize); err != nil {
			t.Fatal(err)
		}
		inFlight := slot == w.next%w.slots && bytes.Equal(got, record(w.next))
		if !bytes.Equal(got, record(k)) && !inFlight {
			t.Fatalf("%s: block %d holds record %d, want the last acknowledged one, %d (%d records acknowledged)",
				path, w.first+slot, be.BigEndian.Uint64(got), k, len(w.acked))
		}
	}
}

// TestPrimaryPartitionedFailsOver is issue 5's scenario 1: A's link goes
// down while a writer records every acknowledged write. A cannot mark B
// outdated, so within a few timeouts it suspends I/O and acknowledges
// nothing more; B, uptodate, is promoted and takes writes; after the link
// is back A finds it lost the role, fails the suspended write, turns
// secondary and is resynced from B.
func TestPrimaryPartitionedFailsOver(t *testing.T) {
	requireE2E(t, "nsenter")
	tr := startTrio(t, "32MiB")
	a, b := tr.dir["a"], tr.dir["b"]

	w := &recordWriter{first: 0, slots: 1024}
	stop := make(chan struct{})
	werr := make(chan error, 1)
	go func() { werr <- w.run(a, stop) }()
	poll.Until(t, 20*time.Second, "100 records acknowledged on a", func() bool { return w.ackedCount() >= 100 })

	cut := time.Now()
	tr.lab.LinkDown("a")
	atCut := w.ackedCount()
	poll.Until(t, 20*time.Second, "a to suspend I/O", func() bool {
		st, err := status(a)
		return err == nil && st.Replication == node.ReplicationSuspended
	})
	took := time.Since(cut)
	suspendedAt := w.ackedCount()
	// The write in flight waits up to one timeout for its ack, then the
	// fence starts at once; the rest is slack for a loaded machine.
	bound := 3 * daemonTimeout
	t.Logf("a suspended I/O %v after its link went down (--timeout %v, bound %v); %d writes acknowledged in between",
		took.Round(time.Millisecond), daemonTimeout, bound, suspendedAt-atCut)
	if took > bound {
		t.Fatalf("a suspended I/O %v after its link went down; want at most %v (3x --timeout)", took.Round(time.Millisecond), bound)
	}
	// One write may have been acknowledged by b just before the cut and
	// counted just after it; no later one can be.
	if n := suspendedAt - atCut; n > 1 {
		t.Fatalf("a acknowledged %d writes after its link went down; at most the one in flight at the cut may be", n)
	}
	if out, err := exec.Command(binary, "promote", "b", "--control", filepath.Join(b, volume.ControlFile)).CombinedOutput(); err != nil {
		t.Fatalf("promote b (uptodate: a never marked it outdated): %v %s", err, out)
	}
	poll.Until(t, 20*time.Second, "b to serve as primary", func() bool {
		st, err := status(b)
		return err == nil && st.Role == cluster.RolePrimary && st.Export != ""
	})
	if n := w.ackedCount(); n != suspendedAt {
		t.Fatalf("a acknowledged %d writes while suspended", n-suspendedAt)
	}
	// Every write a acknowledged is on b, which now takes writes of its own.
	w.check(t, filepath.Join(b, "volume.img"))
	writeBlocks(t, b, 2048, 64)

	tr.lab.LinkUp("a")
	select {
	case err := <-werr:
		if err == nil {
			t.Fatal("the writer on a stopped without an error")
		}
		t.Logf("the suspended write on a failed after the link came back, as it must: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatalf("the write suspended on a did not fail within 30 s of the link coming back; a: %+v", statusJSON(t, a))
	}
	close(stop)
	if n := w.ackedCount(); n != suspendedAt {
		t.Fatalf("a acknowledged %d writes after its link went down", n-suspendedAt)
	}
	poll.Until(t, 30*time.Second, "a to turn secondary", func() bool {
		st, err := status(a)
		return err == nil && st.Role == cluster.RoleSecondary
	})
	waitInSync(t, b, a)
	tr.waitServing("b", "a")
}

// TestSwapUnderLoad is issue 5's scenario 5: `ldmirror swap` while a writer
// keeps writing. Writes wait during the swap and fail on A once B holds
// the role; the writer goes on at B with the record that failed. No
// acknowledged record is lost or overwritten by an older one, the roles are
// exchanged and the epoch grew by one.
func TestSwapUnderLoad(t *testing.T) {
	requireE2E(t, "nsenter")
	tr := startTrio(t, "32MiB")
	a, b := tr.dir["a"], tr.dir["b"]
	before, err := clusterState(t, a)
	if err != nil {
		t.Fatal(err)
	}

	w := &recordWriter{first: 16, slots: 256} // records overwrite slots: order matters
	stop := make(chan struct{})
	werr := make(chan error, 1)
	go func() { werr <- w.run(a, stop) }()
	poll.Until(t, 20*time.Second, "500 records acknowledged on a", func() bool { return w.ackedCount() >= 500 })
	out, err := exec.Command(binary, "swap", "--dir", a).CombinedOutput()
	if err != nil {
		t.Fatalf("swap: %v %s", err, out)
	}
	t.Logf("%s", bytes.TrimSpace(out))
	select {
	case err := <-werr:
		if err == nil || !errors.Is(err, os.ErrClosed) && !strings.Contains(err.Error(), "input/output error") {
			t.Fatalf("the writer on a ended with %v; want the I/O error of a demoted host", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("writes on a did not fail within 20 s of the swap")
	}
	onA := w.ackedCount()
	poll.Until(t, 20*time.Second, "b to serve as primary", func() bool {
		st, err := status(b)
		return err == nil && st.Role == cluster.RolePrimary && st.Export != ""
	})
	go func() { werr <- w.run(b, stop) }()
	poll.Until(t, 20*time.Second, "500 more records acknowledged on b", func() bool { return w.ackedCount() >= onA+500 })
	close(stop)
	if err := <-werr; err != nil {
		t.Fatalf("writer on b: %v", err)
	}

	after, err := clusterState(t, b)
	if err != nil {
		t.Fatal(err)
	}
	if after.Volume.Primary != "b" || after.Volume.Epoch != before.Volume.Epoch+1 {
		t.Fatalf("after the swap the control plane names %q in epoch %d; want b in epoch %d",
			after.Volume.Primary, after.Volume.Epoch, before.Volume.Epoch+1)
	}
	w.check(t, filepath.Join(b, "volume.img"))
	poll.Until(t, 30*time.Second, "a to turn secondary", func() bool {
		st, err := status(a)
		return err == nil && st.Role == cluster.RoleSecondary
	})
	waitInSync(t, b, a)
	w.check(t, filepath.Join(a, "volume.img"))
	if slices.Contains([]string{after.disk("a"), after.disk("b")}, "outdated") {
		t.Fatalf("a swap outdated a host: %+v", after.Volume.Hosts)
	}
}

// TestSwapDemoteRefusedWhileMounted is an operator defect of issue 17:
// `ldmirror swap` (without an agent) and `ldmirror demote` of the primary
// through its own socket are refused while its volume is mounted, saying
// what holds it and how to release it; with the file system unmounted and
// the loop device detached, the swap goes through.
func TestSwapDemoteRefusedWhileMounted(t *testing.T) {
	requireE2E(t, "nsenter", "mkfs.ext4")
	tr := startTrio(t, "64MiB")
	a := tr.dir["a"]
	dev, mnt := mountVolume(t, a)
	before, err := clusterState(t, a)
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"swap", "--dir", a},
		{"demote", "a", "--control", filepath.Join(a, volume.ControlFile)},
	} {
		out, err := exec.Command(binary, args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "in use") || !strings.Contains(string(out), dev) || !strings.Contains(string(out), "--force") {
			t.Fatalf("ldmirror %s with the volume mounted: %v %s; want a refusal naming %s and --force", strings.Join(args, " "), err, out, dev)
		}
	}
	if v, err := clusterState(t, a); err != nil || v.Volume.Primary != "a" || v.Volume.Epoch != before.Volume.Epoch {
		t.Fatalf("after the refusals the control plane names %q in epoch %d (%v); want a in epoch %d", v.Volume.Primary, v.Volume.Epoch, err, before.Volume.Epoch)
	}
	run(t, "umount", mnt)
	run(t, binary, "detach", dev)
	if out, err := exec.Command(binary, "swap", "--dir", a).CombinedOutput(); err != nil {
		t.Fatalf("swap with the volume released: %v %s", err, out)
	}
	tr.waitServing("b", "a")
}

// TestDetachAfterDaemonKilled is an operator defect of issue 17: after a
// kill -9 of the primary's daemon, status says what is left over (the
// loop device, the mounted file system, the dead FUSE export) and the
// commands that clear it, and `ldmirror detach --dir` clears it without
// the daemon; the daemon then starts again in the same directory.
func TestDetachAfterDaemonKilled(t *testing.T) {
	requireE2E(t, "mkfs.ext4")
	a, b, creds := pairDirs(t, "64MiB")
	pri, _ := mirroredPair(t, a, b, creds)
	dev, mnt := mountVolume(t, a)
	pri.kill()
	<-pri.done
	out, err := exec.Command(binary, "status", "--dir", a).CombinedOutput()
	if err == nil {
		t.Fatalf("status with the daemon dead succeeded: %s", out)
	}
	for _, want := range []string{"no daemon runs on " + a, "loop device " + dev, "mounted on " + mnt, "dead FUSE export", "umount " + mnt, "ldmirror detach --dir " + a} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("status with the daemon dead lacks %q:\n%s", want, out)
		}
	}
	if out, err := exec.Command(binary, "detach", "--dir", a).CombinedOutput(); err == nil || !strings.Contains(string(out), "umount it first") {
		t.Fatalf("detach with the file system still mounted: %v %s; want a refusal saying to umount first", err, out)
	}
	_ = exec.Command("umount", mnt).Run() // the file system's last writes fail: its daemon is dead
	out, err = exec.Command(binary, "detach", "--dir", a).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "detached "+dev) || !strings.Contains(string(out), "unmounted the dead export") {
		t.Fatalf("detach with the daemon dead: %v %s", err, out)
	}
	if l := exportLoops(a); len(l) != 0 {
		t.Fatalf("loop devices still bound after detach: %v", l)
	}
	if out, err := exec.Command(binary, "status", "--dir", a).CombinedOutput(); strings.Contains(string(out), "left over") {
		t.Fatalf("status after the cleanup still lists leftovers (%v):\n%s", err, out)
	}
	startDaemon(t, a, "--role", "primary", "--node-id", "a", "--tls-dir", creds)
	poll.Until(t, 10*time.Second, "the restarted daemon to serve its export", func() bool {
		st, err := status(a)
		return err == nil && st.Export != ""
	})
}
