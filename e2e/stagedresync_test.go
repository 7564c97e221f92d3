package e2e

import (
	"crypto/rand"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/internal/poll"
	"github.com/ldmirror/ldmirror/internal/slapdtest"
	"github.com/ldmirror/ldmirror/node"
	"github.com/ldmirror/ldmirror/volume"
)

// The tests of a resync target that stays usable (docs/design.md, "A
// resync target that stays usable"; docs/operations.md, "The source died
// during a resync"): the source of a bitmap resync dies at a given share of
// it, and its target, promoted by force, must hold the directory as it was
// at its disconnect.

// changeMiB is how much directory data a changes while b is away. The
// issue asks for 200 MiB; 48 MiB keeps each run near a minute on a loaded
// two-core CI machine and still makes a resync of thousands of blocks
// spread over LMDB's pages, ext4's metadata and its journal.
const changeMiB = 48

// photoSize is the jpegPhoto of each entry a adds while b is away.
const photoSize = 32 << 10

// sourceLoss is what b was left with after its resync source died.
type sourceLoss struct {
	// resyncing is what b's status said of its resync while it ran (the
	// first sample that said something), lost what it said once a died.
	resyncing string
	lost      node.Status
	promote   string // the output of promote --force
	// failure names the first check b failed (mount, e2fsck, slapd,
	// slapcat), or is empty.
	failure string
}

// loseSourceMidResync runs the scenario: a and b in sync with slapd on
// a, b stopped, changeMiB of adds and modifies on a, b back, a and its
// slapd killed when pct% of the resync is on b (crash point
// resync-percent), b promoted by force once its copy of the control plane
// records its disk as wantDisk. It returns what b holds then, checked
// against the slapcat taken on a before b stopped. bFlags are b's daemon
// flags after its return.
func loseSourceMidResync(t *testing.T, pct int, wantDisk cluster.DiskState, bFlags ...string) sourceLoss {
	t.Helper()
	tr := startTrio(t, "256MiB")
	a, b := tr.dir["a"], tr.dir["b"]
	// a again, with the crash point armed: the initial full sync above
	// counted its percents in the first process.
	tr.daemon["a"].stop(t)
	tr.startArmed("a", fmt.Sprintf("resync-percent@%d", pct))
	tr.waitServing("a", "b")

	_, mnt := mountVolume(t, a)
	t.Cleanup(func() { _ = exec.Command("umount", "-l", mnt).Run() }) // once a's export died under it
	srv := slapdtest.New(t, slapdtest.Options{DataDir: filepath.Join(mnt, "ldap")})
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	changePeople(t, srv, 0, 200, 1<<10)
	before := slapcat(t, srv)

	tr.daemon["b"].stop(t)
	start := time.Now()
	n := changeMiB << 20 / photoSize
	changePeople(t, srv, 200, n, photoSize)
	run(t, "sync", "-f", mnt)
	after := slapcat(t, srv)
	if after == before {
		t.Fatal("the directory on a did not change while b was away")
	}
	st, err := status(a)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("a added %d entries of %d KiB and modified %d with b away, in %v: %d blocks out of sync",
		n, photoSize>>10, n/4, time.Since(start).Round(time.Millisecond), st.DirtyBlocks)

	var r sourceLoss
	var mu sync.Mutex
	sampler := sampleStatus(b, func(st node.Status) error {
		mu.Lock()
		defer mu.Unlock()
		if r.resyncing == "" && st.Link == node.LinkConnected {
			r.resyncing = st.ResyncTarget
		}
		return nil
	})
	tr.start("b", bFlags...)
	waitCrash(t, tr.daemon["a"], "resync-percent", 2*time.Minute)
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	// b's copy of the control plane may apply a's last record a moment
	// after a died.
	poll.Until(t, 20*time.Second, "b to lose its source and be recorded "+string(wantDisk), func() bool {
		st, err := status(b)
		return err == nil && st.Link != node.LinkConnected && st.Disk == wantDisk
	})
	sampler.end()
	r.lost = statusJSON(t, b)
	t.Logf("b after the loss of a at %d%% of the resync: disk %s; while it ran: %q; now: %q", pct, r.lost.Disk, r.resyncing, r.lost.ResyncTarget)

	r.promote = strings.TrimSpace(ldmirror(t, "promote", "b", "--force", "--reason", "a died during the resync",
		"--control", filepath.Join(b, volume.ControlFile)))
	t.Logf("promote: %s", r.promote)
	poll.Until(t, 30*time.Second, "b to serve as primary", func() bool { return tr.servingPrimary("b") })
	r.failure = checkDirectory(t, b, before, after)
	return r
}

// changePeople adds n people from uid first on, each with a jpegPhoto of
// size bytes, and modifies every fourth one added before.
func changePeople(t *testing.T, srv *slapdtest.Server, first, n, size int) {
	t.Helper()
	c, err := srv.Dial()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	photo := make([]byte, size)
	for i := first; i < first+n; i++ {
		_, _ = rand.Read(photo)
		add := ldap.NewAddRequest(fmt.Sprintf("uid=p%d,%s", i, srv.Suffix), nil)
		add.Attribute("objectClass", []string{"inetOrgPerson"})
		add.Attribute("uid", []string{fmt.Sprintf("p%d", i)})
		add.Attribute("cn", []string{fmt.Sprintf("person %d", i)})
		add.Attribute("sn", []string{"staged"})
		add.Attribute("jpegPhoto", []string{string(photo)})
		if err := c.Add(add); err != nil {
			t.Fatalf("add person %d: %v", i, err)
		}
		if i%4 == 0 && i > first {
			mod := ldap.NewModifyRequest(fmt.Sprintf("uid=p%d,%s", (i-first)/4+first-1, srv.Suffix), nil)
			mod.Replace("description", []string{fmt.Sprintf("modified after the add of %d", i)})
			if err := c.Modify(mod); err != nil {
				t.Fatalf("modify person %d: %v", (i-first)/4+first-1, err)
			}
		}
	}
}

func slapcat(t *testing.T, srv *slapdtest.Server) string {
	t.Helper()
	out, err := srv.Slapcat()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// checkDirectory attaches dir's export (dir serves as primary), replays
// the ext4 journal with a mount, runs e2fsck -n, then slapd, and compares
// slapcat with want. It returns the first check that failed.
func checkDirectory(t *testing.T, dir, want, after string) string {
	t.Helper()
	dev := strings.TrimSpace(ldmirror(t, "attach", "--dir", dir))
	t.Cleanup(func() {
		if slices.Contains(exportLoops(dir), dev) {
			_ = exec.Command(binary, "detach", dev).Run()
		}
	})
	mnt := t.TempDir()
	if out, err := exec.Command("mount", dev, mnt).CombinedOutput(); err != nil {
		return fmt.Sprintf("mount: %v: %s", err, out)
	}
	run(t, "umount", mnt)
	if out, err := exec.Command("e2fsck", "-f", "-n", dev).CombinedOutput(); err != nil {
		return fmt.Sprintf("e2fsck -f -n: %v:\n%s", err, tail(out, 1500))
	}
	run(t, "mount", dev, mnt)
	t.Cleanup(func() { _ = exec.Command("umount", mnt).Run() })
	srv := slapdtest.New(t, slapdtest.Options{DataDir: filepath.Join(mnt, "ldap")})
	if err := srv.Start(); err != nil {
		return fmt.Sprintf("slapd: %v", err)
	}
	c, err := srv.Dial()
	if err == nil {
		_, err = c.Search(ldap.NewSearchRequest(srv.Suffix, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases, 0, 0, false,
			"(uid=p1)", []string{"cn"}, nil))
		c.Close()
	}
	if err != nil {
		return fmt.Sprintf("slapd serves no search: %v", err)
	}
	got, err := srv.Slapcat()
	switch {
	case err != nil:
		return err.Error()
	case got == after:
		return "slapcat equals a's after b went away: b holds the resync's data"
	case got != want:
		return fmt.Sprintf("slapcat differs from a's before b went away: %d entries, want %d",
			strings.Count(got, "\ndn: ")+1, strings.Count(want, "\ndn: ")+1)
	}
	return ""
}

// tail is the last n bytes of b, for a message.
func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// TestSourceKilledDuringResync is issue 20's test: whenever a resync's
// source dies (at 10%, 50% and 90% of it), its target keeps its data as
// of its disconnect and can be promoted by force with that loss stated:
// e2fsck finds nothing, slapd starts and serves, and slapcat equals a's
// before b went away. TestSourceKilledDuringUnprotectedResync shows that
// these checks can fail.
func TestSourceKilledDuringResync(t *testing.T) {
	requireE2E(t, "nsenter", "mkfs.ext4", "e2fsck", "slapcat")
	slapdtest.SkipIfMissing(t)
	for _, pct := range []int{10, 50, 90} {
		t.Run(fmt.Sprintf("at %d%%", pct), func(t *testing.T) {
			r := loseSourceMidResync(t, pct, cluster.DiskOutdated)
			if r.failure != "" {
				t.Errorf("b after the loss of its source at %d%% of the resync: %s", pct, r.failure)
			}
			if want := "outdated, consistent as of "; !strings.HasPrefix(r.lost.ResyncTarget, want) {
				t.Errorf("b's status once its source was lost says %q; want %q...", r.lost.ResyncTarget, want)
			}
			if want := "resyncing (target consistent: as of "; r.resyncing != "" && !strings.HasPrefix(r.resyncing, want) {
				t.Errorf("b's status during the resync said %q; want %q...", r.resyncing, want)
			}
			if want := "what a wrote after that is lost"; !strings.Contains(r.promote, want) {
				t.Errorf("promote --force of b printed %q; want the loss stated (%q)", r.promote, want)
			}
		})
	}
}

// TestSourceKilledDuringUnprotectedResync is the same loss with the
// protection off on b: its volume is a mix of old and new blocks, and one
// of the checks fails. At 10% it is e2fsck (ext4's metadata is at the
// start of the volume, copied first); later the blocks left are mostly
// ones the new data does not need, and b happens to hold a's data after
// the changes, which is no proof.
func TestSourceKilledDuringUnprotectedResync(t *testing.T) {
	requireE2E(t, "nsenter", "mkfs.ext4", "e2fsck", "slapcat")
	slapdtest.SkipIfMissing(t)
	r := loseSourceMidResync(t, 10, cluster.DiskInconsistent, "--resync-protection=false")
	if r.failure == "" || strings.HasPrefix(r.failure, "slapcat equals a's after") {
		t.Fatalf("b, unprotected, after its source died at 10%% of the resync: %q; want a check failed: the test cannot fail", r.failure)
	}
	t.Logf("with the protection off: %s", r.failure)
}
