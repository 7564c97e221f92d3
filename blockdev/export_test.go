package blockdev

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
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
	exp, err := Mount(p.mirror, filepath.Join(t.TempDir(), "export"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer exp.UnmountLazy()
	dev, err := AttachLoop(exp.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer DetachLoop(dev)
	if got := LoopDevicesOf(exp.Path()); len(got) != 1 || got[0] != dev {
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
	if deferred, err := DetachLoop(dev); err != nil || deferred {
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
	exp, err := Mount(p.mirror, filepath.Join(t.TempDir(), "export"), nil)
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

// TestMountDirChecks: a mount directory others may enter, or that a user
// other than root could replace, is refused with the fix.
func TestMountDirChecks(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown")
	}
	base := t.TempDir()
	mk := func(name string, mode os.FileMode) string {
		p := filepath.Join(base, name)
		if err := os.Mkdir(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	private := mk("private", 0o700)
	if err := checkMountDir(private); err != nil {
		t.Fatalf("a 0700 directory of root's: %v", err)
	}
	open := mk("open", 0o755)
	if err := checkMountDir(open); !errors.Is(err, ErrMountReachable) || !strings.Contains(err.Error(), "chmod 700 "+open) {
		t.Fatalf("0755: %v", err)
	}
	shared := mk("shared", 0o777)
	in := filepath.Join(shared, "export")
	if err := os.Mkdir(in, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := checkMountDir(in); !errors.Is(err, ErrMountReachable) || !strings.Contains(err.Error(), "other users may write") {
		t.Fatalf("in a 0777 directory: %v", err)
	}
	if err := os.Chmod(shared, os.ModeSticky|0o777); err != nil { // sticky, like /tmp
		t.Fatal(err)
	}
	if err := checkMountDir(in); err != nil {
		t.Fatalf("in a sticky directory: %v", err)
	}
	nobodys := mk("nobodys", 0o700)
	if err := os.Chown(nobodys, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if err := checkMountDir(nobodys); !errors.Is(err, ErrMountReachable) || !strings.Contains(err.Error(), "belongs to uid 65534") {
		t.Fatalf("nobody's directory: %v", err)
	}
	under := filepath.Join(nobodys, "export")
	if err := os.Mkdir(under, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := checkMountDir(under); !errors.Is(err, ErrMountReachable) || !strings.Contains(err.Error(), "that user can replace it") {
		t.Fatalf("in nobody's directory: %v", err)
	}
}

// TestExportDefaultPermissions: with the export mounted where any user
// can walk to it, a user other than root can neither enter the mount nor
// read the volume: the kernel checks the modes (default_permissions).
func TestExportDefaultPermissions(t *testing.T) {
	requireRoot(t)
	base := t.TempDir()
	// Make the path up to the mount walkable by everyone.
	for p := base; p != filepath.Dir(p) && p != os.TempDir(); p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dev, err := OpenFile(filepath.Join(base, "img"), 1<<20)
	if err != nil {
		if err := CreateFile(filepath.Join(base, "img"), 1<<20, true); err != nil {
			t.Fatal(err)
		}
		if dev, err = OpenFile(filepath.Join(base, "img"), 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	defer dev.Close()
	exp, err := Mount(dev, filepath.Join(base, "export"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer exp.UnmountLazy()
	if _, err := os.ReadFile(exp.Path()); err != nil {
		t.Fatalf("root cannot read the export: %v", err)
	}
	cmd := exec.Command("cat", exp.Path())
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Permission denied") {
		t.Fatalf("nobody read the export: %v, %q", err, out)
	}
}
