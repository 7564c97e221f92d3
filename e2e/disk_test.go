package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/events"
	"github.com/ldmirror/ldmirror/internal/poll"
	"github.com/ldmirror/ldmirror/node"
)

// The failing-disk policy (docs/operations.md, "A failing disk"): a real
// full filesystem (a small tmpfs under a sparse backing file) makes a
// host's writes fail with ENOSPC.

// smallFS mounts a tmpfs of size (e.g. "24m") for the test and returns it
// with a func that grows it to size2, as an operator freeing space would.
func smallFS(t *testing.T, size string) (dir string, grow func(size2 string)) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "small")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	run(t, "mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", dir)
	t.Cleanup(func() { run(t, "umount", "-l", dir) })
	return dir, func(size2 string) { run(t, "mount", "-o", "remount,size="+size2, dir) }
}

// sparseTwin creates in dir a sparse copy of the volume in like (same
// identity, no data).
func sparseTwin(t *testing.T, like, dir, size string) {
	t.Helper()
	id := uuidRE.FindString(string(mustRead(t, filepath.Join(like, "meta.json"))))
	ldmirror(t, "init", "--dir", dir, "--size", size, "--volume-uuid", id, "--sparse")
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSecondaryDiskFull: the secondary's filesystem fills. It stops using
// its disk (status: disk failed, naming ENOSPC and attach-disk) and
// refuses the primary, which writes on alone without a reconnect and
// resync loop; once space is freed, attach-disk takes the disk back, the
// primary resyncs it and every acknowledged write is on both hosts.
func TestSecondaryDiskFull(t *testing.T) {
	requireE2E(t)
	a, _, creds := pairDirs(t, "64MiB")
	small, grow := smallFS(t, "24m")
	b := filepath.Join(small, "b")
	sparseTwin(t, a, b, "64MiB")
	mirroredPair(t, a, b, creds)

	onB := followEvents(t, exec.Command(binary, "events", "--dir", b))
	onB.waitSequence(t, "b", 10*time.Second, step{"exists", func(e events.Event) bool { return e.Kind == events.KindExists }})
	ws := newWriters(a)
	ws.start(&recordWriter{first: 0, slots: 16384}) // 64 MiB of new blocks: more than b's 24 MiB
	poll.Until(t, 60*time.Second, "b's disk to fail with ENOSPC", func() bool {
		st, err := status(b)
		return err == nil && st.Disk == cluster.DiskFailed
	})
	// The failure is an event that names the error.
	onB.waitSequence(t, "b", 10*time.Second, step{"disk -> failed (ENOSPC)", func(e events.Event) bool {
		return e.Kind == events.KindChange && e.What == events.WhatDisk && e.To == string(cluster.DiskFailed) && strings.Contains(e.Error, "ENOSPC")
	}})
	st := statusJSON(t, b)
	for _, want := range []string{"ENOSPC", "attach-disk --dir " + b} {
		if !strings.Contains(st.LastError, want) {
			t.Fatalf("b's status after its disk failed: %q; want it to name %q", st.LastError, want)
		}
	}
	// No loop: the primary's reconnects are refused before anything
	// reaches b's disk, and a's writes go on.
	failures, acked := st.ApplyFailures, ws.acked()
	holdFor(t, 3*time.Second, func() error {
		if s, err := status(b); err == nil && s.ApplyFailures != failures {
			return fmt.Errorf("b tried its failed disk again: %d apply failures, %d at the failure", s.ApplyFailures, failures)
		}
		return nil
	})
	if ws.acked() < acked+100 {
		t.Fatalf("a acknowledged %d writes in the 3 s after b's disk failed; want a's writes to go on", ws.acked()-acked)
	}
	if err := ws.halt(t); err != nil {
		t.Fatalf("a write on a failed while b's disk was full: %v", err)
	}
	if sa := statusJSON(t, a); !strings.Contains(sa.LastError, "disk failed") {
		t.Fatalf("a's status does not say why b refuses it: %q", sa.LastError)
	}

	// Room for the whole 64 MiB volume, and for the 64 MiB resync that
	// b stages beside it until it completes (docs/operations.md, "The
	// source died during a resync"; tmpfs allocates as it is written).
	grow("160m")
	ldmirror(t, "attach-disk", "--dir", b)
	waitClean(t, a, b)
	sameBytes(t, img(a), img(b))
	ws.check(t, img(a))
	ws.check(t, img(b))
}

// TestPrimaryDiskFullFailsOver: the primary's filesystem fills. The write
// that failed is not acknowledged (the application sees EIO), every later
// one fails too, and the control plane hands the role to b, which holds
// every acknowledged write; once a's space is freed, attach-disk takes its
// disk back and b resyncs it.
func TestPrimaryDiskFullFailsOver(t *testing.T) {
	requireE2E(t, "nsenter")
	tr := newTrio(t, "64MiB")
	small, grow := smallFS(t, "24m")
	a := filepath.Join(small, "a")
	sparseTwin(t, tr.dir["b"], a, "64MiB")
	tr.dir["a"] = a
	tr.start("b")
	tr.start("a")
	tr.promoteFirst()
	tr.waitServing("a", "b")

	ws := newWriters(a)
	w := &recordWriter{first: 0, slots: 16384}
	ws.start(w)
	ws.failed(t, 60*time.Second, "a's filesystem filling up")
	if st := statusJSON(t, a); st.Disk != cluster.DiskFailed || !strings.Contains(st.LastError, "ENOSPC") {
		t.Fatalf("a's status after its disk failed: disk %s, %q; want failed, naming ENOSPC", st.Disk, st.LastError)
	}
	poll.Until(t, 30*time.Second, "b to serve as primary", func() bool { return tr.servingPrimary("b") })
	ws.check(t, img(tr.dir["b"]))
	late := newWriters(tr.dir["b"])
	late.start(&recordWriter{first: 16384 - 1024, slots: 1024})
	poll.Until(t, 20*time.Second, "200 records acknowledged on b", func() bool { return late.acked() >= 200 })
	if err := late.halt(t); err != nil {
		t.Fatalf("a write on b, primary after a's disk failed: %v", err)
	}

	grow("128m")
	poll.Until(t, 30*time.Second, "a to turn secondary", func() bool {
		st, err := status(a)
		return err == nil && st.Role == cluster.RoleSecondary
	})
	ldmirror(t, "attach-disk", "--dir", a)
	tr.waitServing("b", "a")
	waitClean(t, tr.dir["b"], a)
	sameBytes(t, img(a), img(tr.dir["b"]))
	for _, h := range []string{"a", "b"} {
		ws.check(t, img(tr.dir[h]))
		late.check(t, img(tr.dir[h]))
	}
	if st := statusJSON(t, a); st.Disk == cluster.DiskFailed || st.Link != node.LinkConnected {
		t.Fatalf("a after attach-disk: disk %s, link %s", st.Disk, st.Link)
	}

	// The disk attach-disk put back fails in its turn, a now secondary:
	// its failure must be seen as the first one was (a fault campaign
	// found it was not: the watch followed the replaced disk, and the
	// primary's writes were refused in a reconnect loop).
	filler := fillUp(t, small)
	again := newWriters(tr.dir["b"])
	again.start(&recordWriter{first: 8192, slots: 4096}) // blocks a never allocated
	poll.Until(t, 60*time.Second, "a's disk to fail again, as a secondary", func() bool {
		st, err := status(a)
		return err == nil && st.Disk == cluster.DiskFailed
	})
	base := again.acked()
	poll.Until(t, 20*time.Second, "b's writes to go on without a", func() bool { return again.acked() >= base+200 })
	if err := again.halt(t); err != nil {
		t.Fatalf("a write on b failed while a's disk was full: %v", err)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	ldmirror(t, "attach-disk", "--dir", a)
	tr.waitServing("b", "a")
	waitClean(t, tr.dir["b"], a)
	sameBytes(t, img(a), img(tr.dir["b"]))
	again.check(t, img(a))
}

// fillUp fills the file system of dir with a file, which it returns, until
// ENOSPC.
func fillUp(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 1<<20)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill %s: %v", dir, err)
			}
			return path
		}
	}
}
