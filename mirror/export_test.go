package mirror

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/ldmirror/ldmirror/export"
)

// requireRoot skips tests that need root, FUSE and loop devices.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for FUSE mounts and loop devices")
	}
	for _, p := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("needs %s: %v", p, err)
		}
	}
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// TestExportThroughLoopAndExt4 runs the real frontend: the Mirror exported
// through FUSE, bound to a loop device, formatted ext4 and mounted; a file
// written and fsynced there must reach the secondary's backing file, and an
// fsync on the mount must reach the secondary's device.
func TestExportThroughLoopAndExt4(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skip("needs mkfs.ext4 (e2fsprogs)")
	}
	p := newPair(t)
	exp, err := export.Mount(p.mirror, filepath.Join(t.TempDir(), "export"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer exp.UnmountLazy()
	dev, err := export.AttachLoop(exp.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer export.DetachLoop(dev)
	if got := export.LoopDevicesOf(exp.Path()); len(got) != 1 || got[0] != dev {
		t.Fatalf("LoopDevicesOf = %v, want [%s]", got, dev)
	}
	run(t, "mkfs.ext4", "-q", "-F", "-b", "4096", dev)
	mnt := t.TempDir()
	run(t, "mount", dev, mnt)
	mounted := true
	defer func() {
		if mounted {
			exec.Command("umount", mnt).Run()
		}
	}()
	before := p.secondary.flushes.Load()
	data := bytes.Repeat([]byte("ldmirror"), 64<<10)
	f, err := os.Create(filepath.Join(mnt, "file"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if p.secondary.flushes.Load() == before {
		t.Fatal("fsync on the mount did not reach the secondary's device")
	}
	run(t, "umount", mnt)
	mounted = false
	if deferred, err := export.DetachLoop(dev); err != nil || deferred {
		t.Fatalf("DetachLoop after umount = deferred %v, %v; want done", deferred, err)
	}
	if err := p.mirror.Flush(); err != nil {
		t.Fatal(err)
	}
	if fileSum(t, p.priPath) != fileSum(t, p.secPath) {
		t.Fatal("backing files differ after umount")
	}
	if d := p.mirror.Status().DirtyBlocks; d != 0 {
		t.Fatalf("%d dirty blocks", d)
	}
	if err := exp.Unmount(); err != nil {
		t.Fatal(err)
	}
}

// TestExportNotInheritedByChildren checks that a process the daemon starts
// does not inherit the FUSE device: if it did (slapd started by a hook),
// the connection would outlive the daemon and hang the loop device's I/O.
func TestExportNotInheritedByChildren(t *testing.T) {
	requireRoot(t)
	p := newPair(t)
	exp, err := export.Mount(p.mirror, filepath.Join(t.TempDir(), "export"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer exp.UnmountLazy()
	out, err := exec.Command("sh", "-c", "ls -l /proc/$$/fd").CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(out, []byte("/dev/fuse")) {
		t.Fatalf("a child process inherited /dev/fuse:\n%s", out)
	}
}
