package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/internal/failpoint"
	"github.com/ldmirror/ldmirror/internal/peertest"
	"github.com/ldmirror/ldmirror/internal/poll"
	"github.com/ldmirror/ldmirror/node"
)

// The crash-point tests kill a daemon exactly where a crash matters
// (docs/reliability.md, "Crash points"): each arms one point of package
// failpoint, lets the workload reach it, restarts the daemon without it
// and checks the data: every acknowledged record on both hosts, and the
// backing files equal byte for byte once the pair is in sync again.

// armed is the command prefix that arms points ("name@hit,...") in the
// daemon it starts; none for "".
func armed(points string) []string {
	if points == "" {
		return nil
	}
	return []string{"env", failpoint.EnvVar + "=" + points}
}

// waitCrash waits until d died at point (name@hit), as its log must say.
func waitCrash(t *testing.T, d *daemon, point string, within time.Duration) {
	t.Helper()
	name, _, _ := strings.Cut(point, "@")
	select {
	case <-d.done:
	case <-time.After(within):
		t.Fatalf("the daemon in %s did not reach crash point %s within %v", d.dir, point, within)
	}
	log, _ := os.ReadFile(filepath.Join(d.dir, "daemon.log"))
	if !bytes.Contains(log, []byte("failpoint "+name+": killing the process")) {
		t.Fatalf("the daemon in %s exited (%v), but not at crash point %s:\n%s", d.dir, d.err, name, log)
	}
}

// img is the backing file of the volume in dir.
func img(dir string) string { return filepath.Join(dir, "volume.img") }

// differingBlocks lists the blocks in which files p and q differ.
func differingBlocks(t *testing.T, p, q string) []int64 {
	t.Helper()
	x, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(q)
	if err != nil {
		t.Fatal(err)
	}
	if len(x) != len(y) {
		t.Fatalf("%s has %d bytes, %s %d", p, len(x), q, len(y))
	}
	var differ []int64
	for off := 0; off < len(x); off += blockSize {
		if !bytes.Equal(x[off:off+blockSize], y[off:off+blockSize]) {
			differ = append(differ, int64(off/blockSize))
		}
	}
	return differ
}

// crashPair is a mirrored pair without a control plane whose primary (in
// a) starts with a crash point armed.
type crashPair struct {
	t                *testing.T
	a, b             string
	priArgs, secArgs []string
	pri, sec         *daemon
}

func startCrashPair(t *testing.T, point string, flags ...string) *crashPair {
	t.Helper()
	a, b, creds := pairDirs(t, "64MiB")
	addr := peertest.FreeAddr(t)
	p := &crashPair{t: t, a: a, b: b,
		secArgs: append([]string{"--role", "secondary", "--node-id", "b", "--listen", addr, "--tls-dir", creds}, flags...),
		priArgs: append([]string{"--role", "primary", "--node-id", "a", "--peer", addr, "--tls-dir", creds}, flags...),
	}
	p.sec = startDaemon(t, b, p.secArgs...)
	p.pri = startDaemonIn(t, armed(point), a, p.priArgs...)
	poll.Until(t, 10*time.Second, "the primary to connect", func() bool {
		st, err := status(a)
		return err == nil && st.Link == node.LinkConnected
	})
	return p
}

// killSecondary kills b's daemon and waits until a writes alone.
func (p *crashPair) killSecondary() {
	p.t.Helper()
	p.sec.kill()
	<-p.sec.done
	poll.Until(p.t, 10*time.Second, "the primary to notice", func() bool {
		st, err := status(p.a)
		return err == nil && st.Link != node.LinkConnected
	})
}

// TestCrashPoints kills the primary at each crash point of the write path,
// the activity log, the out-of-sync map, the journal and the resync, and
// checks that the restart loses no acknowledged write and leaves the two
// hosts identical.
func TestCrashPoints(t *testing.T) {
	requireE2E(t)
	async := []string{"--mode", "async", "--journal-size", "16MiB"}
	for _, tc := range []struct {
		name, point string
		flags       []string
		// secondaryDown kills b after 100 records, so that a writes
		// alone and the blocks go out of sync; resync restarts it after
		// 2,000 more, so that the crash comes in its resync.
		secondaryDown, resync bool
	}{
		{name: "written here, not sent", point: "mirror-written-before-send@300"},
		{name: "acknowledged, bit not cleared", point: "mirror-acked-before-clear@300"},
		{name: "torn activity-log transaction", point: "activitylog-torn-write@2"},
		{name: "torn out-of-sync map", point: "scoreboard-map-torn-write@1", secondaryDown: true},
		{name: "journaled, not shipped", point: "journal-appended-before-ship@300", flags: async},
		{name: "half an extent resynced", point: "resync-mid-extent@2", secondaryDown: true, resync: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startCrashPair(t, tc.point, tc.flags...)
			ws := newWriters(p.a)
			ws.start(&recordWriter{first: 0, slots: 4096}) // 16 MiB: four activity-log extents
			if tc.secondaryDown {
				poll.Until(t, 20*time.Second, "100 records acknowledged", func() bool { return ws.acked() >= 100 })
				p.killSecondary()
			}
			if tc.resync {
				n := ws.acked()
				poll.Until(t, 30*time.Second, "2,000 records written with b down", func() bool { return ws.acked() >= n+2000 })
				p.sec = startDaemon(t, p.b, p.secArgs...)
			}
			waitCrash(t, p.pri, tc.point, 60*time.Second)
			_ = ws.halt(t) // the writes in flight fail with the daemon
			acked := ws.acked()

			p.pri = startDaemon(t, p.a, p.priArgs...)
			if tc.secondaryDown && !tc.resync {
				p.sec = startDaemon(t, p.b, p.secArgs...)
			}
			st := waitClean(t, p.a, p.b)
			sameBytes(t, img(p.a), img(p.b))
			ws.check(t, img(p.a))
			ws.check(t, img(p.b))
			t.Logf("%d records acknowledged before the crash, all on both hosts; the restart resent %d blocks, skipped %d by checksum",
				acked, st.ResyncSent, st.ResyncSkipped)
		})
	}
}

// TestCrashWithoutActivityLogDiverges proves that TestCrashPoints can
// fail: with the activity log off, the write on the primary's disk that
// never reached the peer is not resynced after the restart, and the hosts
// differ in exactly its block, until `ldmirror verify` finds and repairs
// it.
func TestCrashWithoutActivityLogDiverges(t *testing.T) {
	requireE2E(t)
	const at = 300 // the crash comes in the write of record at-1
	p := startCrashPair(t, "mirror-written-before-send@"+strconv.Itoa(at), "--activity-log=false")
	ws := newWriters(p.a)
	ws.start(&recordWriter{first: 0, slots: 4096})
	waitCrash(t, p.pri, "mirror-written-before-send", 60*time.Second)
	_ = ws.halt(t)
	p.pri = startDaemon(t, p.a, p.priArgs...)
	waitClean(t, p.a, p.b)
	if got := differingBlocks(t, img(p.a), img(p.b)); !slices.Equal(got, []int64{at - 1}) {
		t.Fatalf("after the restart without the activity log the hosts differ in blocks %v; want exactly block %d, of the write that crashed", got, at-1)
	}
	out := ldmirror(t, "verify", "--dir", p.a)
	if !strings.Contains(out, ": 1 out of sync") {
		t.Fatalf("verify: %q; want 1 block out of sync", out)
	}
	waitClean(t, p.a, p.b)
	sameBytes(t, img(p.a), img(p.b))
}

// servingPrimary reports whether host of tr serves its export as primary.
func (tr *trio) servingPrimary(host string) bool {
	st, err := status(tr.dir[host])
	return err == nil && st.Role == cluster.RolePrimary && st.Export != ""
}

// TestCrashBetweenCommitAndAction kills a data host between a raft commit
// and its data path acting on it: a primary that committed "peer
// outdated" but did not start its new generation, and a host the control
// plane named primary that did not start serving. After the restart the
// host acts on the committed state; no acknowledged write is lost and the
// hosts end identical.
func TestCrashBetweenCommitAndAction(t *testing.T) {
	requireE2E(t, "nsenter")
	t.Run("fenced, no new generation", func(t *testing.T) {
		const point = "node-fenced-before-generation"
		tr := newTrio(t, "64MiB")
		tr.start("b")
		tr.startArmed("a", point)
		tr.promoteFirst()
		tr.waitServing("a", "b")
		ws := newWriters(tr.dir["a"])
		ws.start(&recordWriter{first: 0, slots: 4096})
		poll.Until(t, 20*time.Second, "100 records acknowledged", func() bool { return ws.acked() >= 100 })
		tr.daemon["b"].kill() // a's writes fail to ship: it fences b
		waitCrash(t, tr.daemon["a"], point, 60*time.Second)
		_ = ws.halt(t)

		tr.start("a")
		poll.Until(t, 30*time.Second, "a to serve again, b outdated", func() bool { return tr.servingPrimary("a") })
		late := newWriters(tr.dir["a"]) // written while b is down
		late.start(&recordWriter{first: 8192, slots: 1024})
		poll.Until(t, 20*time.Second, "200 records acknowledged on a alone", func() bool { return late.acked() >= 200 })
		if err := late.halt(t); err != nil {
			t.Fatalf("a write on a, alone after its restart, failed: %v", err)
		}
		tr.start("b")
		tr.waitServing("a", "b")
		waitClean(t, tr.dir["a"], tr.dir["b"])
		sameBytes(t, img(tr.dir["a"]), img(tr.dir["b"]))
		for _, h := range []string{"a", "b"} {
			ws.check(t, img(tr.dir[h]))
			late.check(t, img(tr.dir[h]))
		}
	})
	t.Run("promoted, not serving", func(t *testing.T) {
		const point = "node-promoted-before-primary-term"
		tr := newTrio(t, "64MiB")
		tr.startArmed("b", point)
		tr.start("a")
		tr.promoteFirst()
		tr.waitServing("a", "b")
		ws := newWriters(tr.dir["a"])
		ws.start(&recordWriter{first: 0, slots: 4096})
		poll.Until(t, 20*time.Second, "300 records acknowledged", func() bool { return ws.acked() >= 300 })
		if err := ws.halt(t); err != nil {
			t.Fatal(err)
		}
		// The swap commits b as primary; b dies before it serves, so the
		// command may report that it never did.
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, binary, "swap", "--dir", tr.dir["a"]).CombinedOutput()
		t.Logf("swap: %v %s", err, out)
		waitCrash(t, tr.daemon["b"], point, 60*time.Second)
		poll.Until(t, 30*time.Second, "a to step down", func() bool {
			st, err := status(tr.dir["a"])
			return err == nil && st.Role == cluster.RoleSecondary
		})
		if tr.servingPrimary("a") {
			t.Fatal("a serves as primary although the control plane named b")
		}

		tr.start("b")
		tr.waitServing("b", "a")
		late := newWriters(tr.dir["b"])
		late.start(&recordWriter{first: 8192, slots: 1024})
		poll.Until(t, 20*time.Second, "200 records acknowledged on b", func() bool { return late.acked() >= 200 })
		if err := late.halt(t); err != nil {
			t.Fatalf("a write on b, primary after its restart, failed: %v", err)
		}
		waitClean(t, tr.dir["b"], tr.dir["a"])
		sameBytes(t, img(tr.dir["a"]), img(tr.dir["b"]))
		for _, h := range []string{"a", "b"} {
			ws.check(t, img(tr.dir[h]))
			late.check(t, img(tr.dir[h]))
		}
	})
}
