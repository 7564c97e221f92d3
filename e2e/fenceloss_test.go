package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/internal/poll"
	"github.com/ldmirror/ldmirror/mirror"
	"github.com/ldmirror/ldmirror/volume"

	"github.com/ldmirror/ldmirror/node"
)

// The data-link and cluster ports of the trio's daemons.
const (
	dataPort = 7789
	raftPort = 7400
)

// writers are record writers on one primary's export, each on its own
// blocks, stopped together.
type writers struct {
	dir  string
	stop chan struct{}
	errs chan error
	all  []*recordWriter
}

func newWriters(dir string) *writers {
	return &writers{dir: dir, stop: make(chan struct{}), errs: make(chan error, 16)}
}

// start runs w until the set is halted or a write fails.
func (ws *writers) start(w *recordWriter) {
	ws.all = append(ws.all, w)
	go func() { ws.errs <- w.run(ws.dir, ws.stop) }()
}

// acked is the number of records acknowledged by all of them.
func (ws *writers) acked() int {
	n := 0
	for _, w := range ws.all {
		n += w.ackedCount()
	}
	return n
}

// halt stops the writers and returns the first error one of them ended with.
func (ws *writers) halt(t *testing.T) error {
	t.Helper()
	close(ws.stop)
	var first error
	for range ws.all {
		select {
		case err := <-ws.errs:
			if first == nil {
				first = err
			}
		case <-time.After(30 * time.Second):
			t.Fatal("a writer did not stop within 30 s")
		}
	}
	return first
}

// failed waits until every writer ended with an error, as writes on a
// deposed primary must.
func (ws *writers) failed(t *testing.T, within time.Duration, why string) {
	t.Helper()
	for range ws.all {
		select {
		case err := <-ws.errs:
			if err == nil {
				t.Fatalf("a writer stopped without an error; want the error of %s", why)
			}
		case <-time.After(within):
			t.Fatalf("the writes on %s did not fail within %v of %s", ws.dir, within, why)
		}
	}
	close(ws.stop)
}

// check verifies every writer's acknowledged records in the volume file at path.
func (ws *writers) check(t *testing.T, path string) {
	t.Helper()
	for _, w := range ws.all {
		w.check(t, path)
	}
}

// fenceWithLiveSession brings the trio to the state in which issue 13's
// fault campaign lost acknowledged writes: a, primary, committed "b
// outdated" while its session to b was already up again, and b became
// uptodate after the resync that followed. To get there deterministically,
// a loses its data link to b and its raft links, so that its writes wait
// for the fence; the data link comes back first, so that a reconnects
// while the writes still wait, and a new writer starts then; the raft
// links come back last, so that the fence commits with the session live.
// The code before issue 13's fix cleared a "peer fenced" flag when the
// session came up, and the new writer's fence set it again for the live
// session.
func fenceWithLiveSession(t *testing.T, tr *trio, ws *writers, late *recordWriter) {
	t.Helper()
	lab, a := tr.lab, tr.dir["a"]
	lab.BlockPort("a", "b", dataPort)
	lab.BlockPort("a", "b", raftPort)
	lab.BlockPort("a", "w", raftPort)
	poll.Until(t, 20*time.Second, "a to suspend its writes (no peer, no quorum)", func() bool {
		st, err := status(a)
		return err == nil && st.Replication == node.ReplicationSuspended
	})
	acked := ws.acked()
	connects := logLines(t, a, "peer connected")
	lab.UnblockPort("a", "b", dataPort)
	poll.Until(t, 20*time.Second, "a to reconnect to b while its writes wait for the fence", func() bool {
		return logLines(t, a, "peer connected") > connects
	})
	ws.start(late)
	fences := logLines(t, a, "peer marked outdated")
	uptodate := logLines(t, a, "peer recorded uptodate")
	lab.UnblockPort("a", "b", raftPort)
	lab.UnblockPort("a", "w", raftPort)
	poll.Until(t, 20*time.Second, "a's fence to commit", func() bool {
		return logLines(t, a, "peer marked outdated") > fences
	})
	// The record that follows the resync, not the one from before the
	// fence that a's copy of the state may still show.
	poll.Until(t, 30*time.Second, "b to be recorded uptodate again after the resync", func() bool {
		return logLines(t, a, "peer recorded uptodate") > uptodate
	})
	poll.Until(t, 30*time.Second, "a's copy to show b uptodate", func() bool {
		v, err := clusterState(t, a)
		st, serr := status(a)
		return err == nil && serr == nil && v.disk("b") == "uptodate" && st.Link == node.LinkConnected
	})
	poll.Until(t, 20*time.Second, "a to acknowledge writes again", func() bool { return ws.acked() > acked+100 })
}

// TestIsolatedPrimaryAfterLiveFence is issue 13's sequence 1 made
// deterministic: after a fence committed with the session live, a is cut
// from b and w. It must suspend (it cannot commit "b outdated" again), b is
// promoted, and every record a acknowledged is on b.
func TestIsolatedPrimaryAfterLiveFence(t *testing.T) {
	requireE2E(t, "nsenter")
	tr := startTrio(t, "32MiB")
	a, b := tr.dir["a"], tr.dir["b"]
	ws := newWriters(a)
	ws.start(&recordWriter{first: 0, slots: 2048})
	poll.Until(t, 20*time.Second, "100 records acknowledged on a", func() bool { return ws.acked() >= 100 })
	fenceWithLiveSession(t, tr, ws, &recordWriter{first: 4096, slots: 2048})

	cut := time.Now()
	tr.lab.LinkDown("a")
	atCut := ws.acked()
	poll.Until(t, 20*time.Second, "a to notice that b is gone", func() bool {
		st, err := status(a)
		return err == nil && st.Link != node.LinkConnected
	})
	t.Logf("a lost b %v after the cut; %d writes acknowledged in between", time.Since(cut).Round(time.Millisecond), ws.acked()-atCut)
	if out, err := exec.Command(binary, "promote", "b", "--control", filepath.Join(b, volume.ControlFile)).CombinedOutput(); err != nil {
		t.Fatalf("promote b (uptodate, b and w a quorum): %v %s", err, out)
	}
	poll.Until(t, 20*time.Second, "b to serve as primary", func() bool {
		st, err := status(b)
		return err == nil && st.Role == cluster.RolePrimary && st.Export != ""
	})
	// Each writer may have had one write acknowledged by b just before the
	// cut and counted just after it; no later one can be.
	if n := ws.acked() - atCut; n > len(ws.all) {
		t.Fatalf("a acknowledged %d writes after it was cut from b and w; at most the %d in flight at the cut may be", n, len(ws.all))
	}
	ws.check(t, filepath.Join(b, "volume.img"))
	if st, err := status(a); err != nil || st.Replication != node.ReplicationSuspended {
		t.Fatalf("a, cut from b and w: replication %q (%v); want suspended", st.Replication, err)
	}

	tr.lab.LinkUp("a")
	ws.failed(t, 30*time.Second, "a's demotion")
	poll.Until(t, 30*time.Second, "a to turn secondary", func() bool {
		st, err := status(a)
		return err == nil && st.Role == cluster.RoleSecondary
	})
	waitInSync(t, b, a)
	ws.check(t, filepath.Join(a, "volume.img"))
}

// TestHalfResyncedPeerNotPromoted is issue 13's sequence 2 made
// deterministic: after a fence committed with the session live, b is
// killed and a goes on writing alone; b returns and a resyncs it, slowly;
// a is killed a third of the way through. b lacks writes a acknowledged,
// so `ldmirror promote b` must be refused without --force. a, restarted,
// finishes the resync and every record it acknowledged is on b.
func TestHalfResyncedPeerNotPromoted(t *testing.T) {
	requireE2E(t, "nsenter")
	tr := startTrio(t, "64MiB", "--resync-rate", "4MiB", "--resync-min-rate", "4MiB")
	a, b := tr.dir["a"], tr.dir["b"]
	ws := newWriters(a)
	ws.start(&recordWriter{first: 0, slots: 6144})
	poll.Until(t, 20*time.Second, "100 records acknowledged on a", func() bool { return ws.acked() >= 100 })
	fenceWithLiveSession(t, tr, ws, &recordWriter{first: 8192, slots: 2048})

	tr.daemon["b"].kill()
	<-tr.daemon["b"].done
	atKill := ws.acked()
	poll.Until(t, 60*time.Second, "a to acknowledge 4000 records (16 MiB) without b", func() bool { return ws.acked() >= atKill+4000 })
	if err := ws.halt(t); err != nil {
		t.Fatalf("writer on a: %v", err)
	}
	// a wrote without b: its fence for this loss marked b outdated.
	tr.waitPeerDisk("b", "outdated")

	tr.start("b")
	poll.Until(t, 30*time.Second, "a to resync b past 30%", func() bool {
		st, err := status(a)
		return err == nil && st.Replication == mirror.StateResyncing && st.ResyncTotal > 0 && st.ResyncDone*10 >= st.ResyncTotal*3
	})
	st, _ := status(a)
	tr.daemon["a"].kill()
	<-tr.daemon["a"].done
	t.Logf("a killed at %d of %d resync blocks", st.ResyncDone, st.ResyncTotal)

	out, err := exec.Command(binary, "promote", "b", "--control", filepath.Join(b, volume.ControlFile)).CombinedOutput()
	if err == nil {
		t.Fatalf("promote b succeeded although b is half resynced and lacks writes a acknowledged: %s", out)
	}
	if !strings.Contains(string(out), "uptodate") {
		t.Fatalf("promote b refused with %q; want it to say b is not uptodate", out)
	}
	v, err := clusterState(t, b)
	if err != nil {
		t.Fatal(err)
	}
	if d := v.disk("b"); d == "uptodate" {
		t.Fatal("cluster status calls the half-resynced b uptodate")
	}
	t.Logf("promote b refused: %s", strings.TrimSpace(string(out)))

	tr.start("a")
	tr.waitServing("a", "b")
	waitInSync(t, a, b)
	ws.check(t, filepath.Join(b, "volume.img"))
}

// presentPrefix checks write-order fidelity on the volume file at path:
// the records of w found there must be a prefix of the acknowledged ones,
// with no hole. It returns how many acknowledged records are there. w must
// not reuse its slots.
func (w *recordWriter) presentPrefix(t *testing.T, path string) int {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.next > w.slots {
		t.Fatalf("the writer reused slots (%d records, %d slots): prefix order cannot be checked", w.next, w.slots)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := make([]byte, blockSize)
	present := -1
	for i, k := range w.acked {
		if _, err := f.ReadAt(got, int64(w.first+k%w.slots)*blockSize); err != nil {
			t.Fatal(err)
		}
		on := bytes.Equal(got, record(k))
		switch {
		case !on && present < 0:
			present = i
		case on && present >= 0:
			t.Fatalf("%s holds acknowledged record %d but not the earlier record %d: not a prefix", path, k, w.acked[present])
		}
	}
	if present < 0 {
		present = len(w.acked)
	}
	return present
}

// TestFenceAfterPeerUptodateAgain runs issue 13's variants: b is outdated
// by a fence, returns to uptodate by one of the ways a peer does, and then
// a is cut off: from b and w (it must suspend, and nothing it acknowledged
// may be missing on the promoted b — in async mode nothing but a suffix
// within the journal lag at the cut and one --timeout), or from b only (it
// commits the fence again and goes on; b cannot be promoted).
func TestFenceAfterPeerUptodateAgain(t *testing.T) {
	requireE2E(t, "nsenter")
	cases := []struct {
		name  string
		size  string // of the volume: an async writer must not reuse its blocks
		extra []string
		// uptodate takes b from outdated back to uptodate.
		uptodate func(t *testing.T, tr *trio)
		cutBoth  bool
	}{
		{"operator resync, then a isolated", "64MiB", nil, func(t *testing.T, tr *trio) {
			tr.lab.Heal("a", "b")
			tr.waitPeerDisk("b", "uptodate")
			out := ldmirror(t, "resync", "--full", "--dir", tr.dir["a"])
			t.Logf("ldmirror resync --full: %s", strings.TrimSpace(out))
		}, true},
		{"resync interrupted and resumed, then a isolated", "64MiB", []string{"--resync-rate", "4MiB", "--resync-min-rate", "4MiB"}, func(t *testing.T, tr *trio) {
			writeBlocks(t, tr.dir["a"], 4096, 2048) // 8 MiB for b to miss
			tr.lab.Heal("a", "b")
			poll.Until(t, 30*time.Second, "the resync to b to pass 20%", func() bool {
				st, err := status(tr.dir["a"])
				return err == nil && st.Replication == mirror.StateResyncing && st.ResyncTotal > 0 && st.ResyncDone*5 >= st.ResyncTotal
			})
			tr.lab.Partition("a", "b")
			poll.Until(t, 20*time.Second, "a to lose b mid-resync", func() bool {
				st, err := status(tr.dir["a"])
				return err == nil && st.Link != node.LinkConnected
			})
			if d := tr.peerDisk("b"); d == "uptodate" {
				t.Fatalf("b is %s with its resync interrupted", d)
			}
			tr.lab.Heal("a", "b")
		}, true},
		{"async journal catch-up, then a isolated", "1GiB", []string{"--mode", "async", "--journal-size", "256MiB"}, func(t *testing.T, tr *trio) {
			tr.lab.Heal("a", "b")
			tr.waitPeerDisk("b", "uptodate")
			if st := statusJSON(t, tr.dir["a"]); st.LastCatchUp != "journal" {
				t.Fatalf("b caught up by %q (%s); want journal", st.LastCatchUp, st.FallbackReason)
			}
		}, true},
		{"resync, then a cut from b only", "64MiB", nil, func(t *testing.T, tr *trio) {
			tr.lab.Heal("a", "b")
		}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr := startTrio(t, tc.size, tc.extra...)
			a, b := tr.dir["a"], tr.dir["b"]
			async := slices.Contains(tc.extra, "async")
			ws := newWriters(a)
			w := &recordWriter{first: 0, slots: 8192}
			if async {
				w.slots = 1 << 18
			}
			ws.start(w)
			poll.Until(t, 20*time.Second, "100 records acknowledged on a", func() bool { return ws.acked() >= 100 })

			tr.lab.Partition("a", "b")
			tr.waitPeerDisk("b", "outdated")
			tc.uptodate(t, tr)
			tr.waitPeerDisk("b", "uptodate")
			poll.Until(t, 20*time.Second, "a to replicate to b", func() bool {
				st, err := status(a)
				return err == nil && st.Link == node.LinkConnected && st.DirtyBlocks == 0
			})

			if !tc.cutBoth {
				fences := logLines(t, a, "peer marked outdated")
				tr.lab.Partition("a", "b")
				at := ws.acked()
				poll.Until(t, 20*time.Second, "a to fence b again and go on", func() bool {
					return logLines(t, a, "peer marked outdated") > fences && ws.acked() > at+100
				})
				tr.waitPeerDisk("b", "outdated")
				if out, err := exec.Command(binary, "promote", "b", "--control", filepath.Join(b, volume.ControlFile)).CombinedOutput(); err == nil {
					t.Fatalf("promote b succeeded while b is outdated: %s", out)
				}
				tr.lab.Heal("a", "b")
				if err := ws.halt(t); err != nil {
					t.Fatalf("writer on a: %v", err)
				}
				waitInSync(t, a, b)
				ws.check(t, filepath.Join(b, "volume.img"))
				return
			}

			atLag, lag := ws.acked(), statusJSON(t, a).JournalLag
			cut := time.Now()
			tr.lab.LinkDown("a")
			atCut := ws.acked()
			poll.Until(t, 20*time.Second, "a to suspend its writes", func() bool {
				st, err := status(a)
				return err == nil && st.Replication == node.ReplicationSuspended
			})
			suspendedAt := ws.acked()
			t.Logf("a suspended %v after the cut (--timeout %v); %d writes acknowledged in between; journal lag at the cut %d records",
				time.Since(cut).Round(time.Millisecond), daemonTimeout, suspendedAt-atCut, lag)
			if took := time.Since(cut); took > 3*daemonTimeout {
				t.Fatalf("a suspended %v after the cut; want at most 3x --timeout", took.Round(time.Millisecond))
			}
			if !async && suspendedAt-atCut > 1 {
				t.Fatalf("a acknowledged %d writes after the cut; at most the one in flight may be", suspendedAt-atCut)
			}
			if out, err := exec.Command(binary, "promote", "b", "--control", filepath.Join(b, volume.ControlFile)).CombinedOutput(); err != nil {
				t.Fatalf("promote b: %v %s", err, out)
			}
			poll.Until(t, 20*time.Second, "b to serve as primary", func() bool {
				st, err := status(b)
				return err == nil && st.Role == cluster.RolePrimary && st.Export != ""
			})
			if n := ws.acked(); n != suspendedAt {
				t.Fatalf("a acknowledged %d writes while suspended", n-suspendedAt)
			}
			if !async {
				ws.check(t, filepath.Join(b, "volume.img"))
				return
			}
			// Async: b holds a prefix of what a acknowledged; the rest is
			// within the journal lag just before the cut plus what a
			// acknowledged from then until it noticed the loss.
			present := w.presentPrefix(t, filepath.Join(b, "volume.img"))
			lost := suspendedAt - present
			t.Logf("async: b holds the first %d of %d acknowledged records; %d lost", present, suspendedAt, lost)
			if bound := int(lag) + suspendedAt - atLag + 1; lost > bound {
				t.Fatalf("async: %d acknowledged records lost; the bound is the journal lag before the cut plus the writes until the suspension, %d", lost, bound)
			}
		})
	}
}

// peerDisk is the control plane's disk state of host, as a's daemon sees it.
func (tr *trio) peerDisk(host string) string { return tr.peerDiskFrom("a", host) }

// waitPeerDisk waits until the control plane records host's disk as state.
func (tr *trio) waitPeerDisk(host, state string) {
	tr.t.Helper()
	poll.Until(tr.t, 30*time.Second, host+" to be "+state, func() bool { return tr.peerDisk(host) == state })
}

// TestAsyncBitmapResyncTargetNotPromoted is issue 21's second defect: an
// async primary killed while connected restarts without a journal it can
// replay (here: the journal file is gone, as after damage), so it resyncs
// its peer from the bitmap, in block order; killed again a tenth of the way
// through, it leaves b outdated (it staged the resync: consistent as of
// a's first crash), and `ldmirror promote b` must be refused without
// --force. a, restarted, finishes the resync.
func TestAsyncBitmapResyncTargetNotPromoted(t *testing.T) {
	requireE2E(t, "nsenter")
	tr := startTrio(t, "64MiB", "--mode", "async", "--resync-rate", "4MiB", "--resync-min-rate", "4MiB")
	a, b := tr.dir["a"], tr.dir["b"]
	ws := newWriters(a)
	ws.start(&recordWriter{first: 0, slots: 8192})
	poll.Until(t, 20*time.Second, "5000 records acknowledged on a", func() bool { return ws.acked() >= 5000 })
	// b stops applying for a moment (shorter than --timeout, so a does not
	// lose it): a's journal runs ahead, and a dies then. Most blocks then
	// differ, and the resync after the restart sends from its start.
	// On a loaded machine a may not write 2000 records in the half timeout
	// b may be stopped: then b resumes, catches up, and is stopped again.
	for try := 1; ; try++ {
		if err := tr.daemon["b"].cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		if poll.Wait(daemonTimeout/2, func() bool {
			st, err := status(a)
			return err == nil && st.JournalLag >= 2000
		}) {
			break
		}
		if err := tr.daemon["b"].cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		if try == 10 {
			t.Fatalf("a's journal did not run 2000 records ahead of b within %v in %d tries", daemonTimeout/2, try)
		}
		poll.Until(t, 20*time.Second, "b to catch up", func() bool {
			st, err := status(a)
			return err == nil && st.JournalLag < 100
		})
	}
	tr.daemon["a"].kill()
	<-tr.daemon["a"].done
	if err := tr.daemon["b"].cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if err := ws.halt(t); err == nil {
		t.Fatal("the writer on a did not notice that a's daemon died")
	}
	if d := tr.peerDiskFrom("b", "b"); d != "uptodate" {
		t.Fatalf("b is %s after a crashed while connected; want uptodate (async: it holds a prefix)", d)
	}
	if err := os.Remove(filepath.Join(a, volume.JournalFile)); err != nil {
		t.Fatal(err)
	}
	tr.start("a")
	poll.Until(t, 30*time.Second, "a to resync b by bitmap past 10%", func() bool {
		st, err := status(a)
		return err == nil && st.Replication == mirror.StateResyncing && st.ResyncTotal > 0 && st.ResyncDone*10 >= st.ResyncTotal && st.ResyncSent > 0
	})
	st := statusJSON(t, a)
	tr.daemon["a"].kill()
	<-tr.daemon["a"].done
	t.Logf("a killed at %d of %d resync blocks (catch-up by %s: %s)", st.ResyncDone, st.ResyncTotal, st.LastCatchUp, st.FallbackReason)

	out, err := exec.Command(binary, "promote", "b", "--control", filepath.Join(b, volume.ControlFile)).CombinedOutput()
	if err == nil {
		t.Fatalf("promote b succeeded although b is the target of an unfinished bitmap resync: %s", out)
	}
	// b stages the resync (docs/design.md, "A resync target that stays
	// usable"): it keeps its data as of a's first crash, and lacks the
	// writes the resync was bringing.
	if d := tr.peerDiskFrom("b", "b"); d != "outdated" {
		t.Fatalf("b is %q mid-resync; want outdated (staged)", d)
	}
	t.Logf("promote b refused: %s", strings.TrimSpace(string(out)))

	tr.start("a")
	tr.waitServing("a", "b")
	waitInSync(t, a, b)
	ws.check(t, filepath.Join(b, "volume.img"))
}

// peerDiskFrom is the control plane's disk state of host as the daemon on
// from sees it.
func (tr *trio) peerDiskFrom(from, host string) string {
	tr.t.Helper()
	v, err := clusterState(tr.t, tr.dir[from])
	if err != nil {
		return ""
	}
	return v.disk(host)
}
