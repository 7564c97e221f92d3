package export

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/ldmirror/ldmirror/blockdev"
)

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
	if os.Geteuid() != 0 {
		t.Skip("needs root for a FUSE mount")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("needs /dev/fuse: %v", err)
	}
	base := t.TempDir()
	// Make the path up to the mount walkable by everyone.
	for p := base; p != filepath.Dir(p) && p != os.TempDir(); p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := blockdev.CreateFile(filepath.Join(base, "img"), 1<<20, true); err != nil {
		t.Fatal(err)
	}
	dev, err := blockdev.OpenFile(filepath.Join(base, "img"), 1<<20)
	if err != nil {
		t.Fatal(err)
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
