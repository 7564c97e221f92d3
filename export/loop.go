package export

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrLoopBusy reports a loop device that cannot be detached because it is
// in use (mounted, or held open).
var ErrLoopBusy = errors.New("loop device is in use (mounted or open)")

// AttachLoop binds the file at path to a free loop device and returns the
// device's path. Direct I/O keeps the kernel from caching the data twice
// (once above the loop device, once in the FUSE file).
func AttachLoop(path string) (string, error) {
	file, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return "", err
	}
	defer file.Close()
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return "", fmt.Errorf("open loop control: %w", err)
	}
	defer ctl.Close()
	// Another process may take the free device between GET_FREE and
	// CONFIGURE; then ask again.
	for try := 0; try < 8; try++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return "", fmt.Errorf("find a free loop device: %w", err)
		}
		dev := fmt.Sprintf("/dev/loop%d", n)
		lf, err := os.OpenFile(dev, os.O_RDWR, 0)
		if err != nil {
			return "", err
		}
		cfg := unix.LoopConfig{Fd: uint32(file.Fd())}
		cfg.Info.Flags = unix.LO_FLAGS_DIRECT_IO
		copy(cfg.Info.File_name[:], path)
		err = unix.IoctlLoopConfigure(int(lf.Fd()), &cfg)
		lf.Close()
		if errors.Is(err, unix.EBUSY) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("configure %s over %s: %w", dev, path, err)
		}
		return dev, nil
	}
	return "", errors.New("no free loop device after 8 tries")
}

// DetachLoop unbinds the loop device at dev. If the device is still
// mounted or open the kernel only marks it to detach when its last user
// closes it; deferred says so.
func DetachLoop(dev string) (deferred bool, err error) {
	f, err := os.OpenFile(dev, os.O_RDONLY, 0)
	if err != nil {
		return false, err
	}
	err = unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0)
	// Our own descriptor counts as a user: close it before looking.
	f.Close()
	if err != nil {
		if errors.Is(err, unix.EBUSY) {
			return false, fmt.Errorf("detach %s: %w", dev, ErrLoopBusy)
		}
		return false, fmt.Errorf("detach %s: %w", dev, err)
	}
	_, err = os.Stat(filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file"))
	return err == nil, nil
}

// LoopDevicesOf lists the loop devices whose backing file is path.
func LoopDevicesOf(path string) []string {
	matches, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	var devs []string
	for _, m := range matches {
		b, err := os.ReadFile(m)
		if err != nil || strings.TrimSpace(string(b)) != path {
			continue
		}
		devs = append(devs, "/dev/"+filepath.Base(filepath.Dir(filepath.Dir(m))))
	}
	return devs
}

// Leftovers is what a daemon killed while it served an export leaves in
// its volume directory.
type Leftovers struct {
	// Loops are the loop devices still bound to the export file, and
	// Mounts the mount points of those that carry a mounted file system.
	Loops, Mounts []string
	// DeadMount: the export directory is a FUSE mount nothing serves.
	DeadMount bool
}

// Empty reports whether nothing is left over.
func (l Leftovers) Empty() bool { return len(l.Loops) == 0 && !l.DeadMount }

// LeftoversOf finds what is left over at the export directory dir when no
// daemon serves it.
func LeftoversOf(dir string) Leftovers {
	var l Leftovers
	l.Loops = LoopDevicesOf(filepath.Join(dir, FileName))
	for _, d := range l.Loops {
		l.Mounts = append(l.Mounts, mountPointsOf(d)...)
	}
	l.DeadMount = deadMount(dir)
	return l
}

// deadMount reports whether dir is the FUSE mount of a server that died.
// It asks with statfs, not stat: stat may answer from the kernel's
// attribute cache (the export mounts with default_permissions), statfs
// always asks the server.
func deadMount(dir string) bool {
	var st unix.Statfs_t
	return errors.Is(unix.Statfs(dir, &st), unix.ENOTCONN)
}

// mountPointsOf lists where the block device dev is mounted.
func mountPointsOf(dev string) []string {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == dev {
			out = append(out, f[1])
		}
	}
	return out
}

// ClearDeadMount detaches the dead FUSE mount at dir lazily, so that a
// restarted daemon can mount its export there again.
func ClearDeadMount(dir string) error {
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("unmount the dead export %s: %w", dir, err)
	}
	return nil
}
