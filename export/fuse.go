package export

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/ldmirror/ldmirror/blockdev"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// FileName is the name of the single file a FUSE export shows.
const FileName = "volume"

const (
	rootNode = fuse.FUSE_ROOT_ID
	fileNode = 2
)

// FUSE serves a blockdev.Device as the single regular file FileName in a
// FUSE mount. It uses go-fuse's raw API: the node API takes a global lock per
// request, which would serialize the I/O the loop device issues in parallel.
type FUSE struct {
	fuse.RawFileSystem
	dev    blockdev.Device
	log    *slog.Logger
	server *fuse.Server
	dir    string
}

// ErrMountReachable refuses a mount directory that users other than the
// daemon's may enter, or replace through a parent they can write to.
var ErrMountReachable = errors.New("mount directory reachable by other users")

// Mount exports dev under the directory dir, which is created (mode 0700)
// if missing. The kernel checks the export's modes (default_permissions):
// its root directory is 0700 and the file 0600, both root's, so only root
// reads or writes the volume, although the mount allows other users (the
// loop device's I/O must pass). dir itself must be private (see
// checkMountDir).
func Mount(dev blockdev.Device, dir string, log *slog.Logger) (*FUSE, error) {
	if log == nil {
		log = slog.Default()
	}
	// A daemon killed while serving leaves a dead FUSE mount behind.
	if deadMount(dir) {
		log.Warn("removing the dead FUSE mount of a previous run", "dir", dir)
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			return nil, fmt.Errorf("remove dead mount %s: %w", dir, err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := checkMountDir(dir); err != nil {
		return nil, err
	}
	e := &FUSE{RawFileSystem: fuse.NewDefaultRawFileSystem(), dev: dev, log: log, dir: dir}
	srv, err := fuse.NewServer(e, dir, &fuse.MountOptions{
		FsName:        "ldmirror",
		Name:          "ldmirror",
		MaxWrite:      fuse.MAX_KERNEL_WRITE,
		MaxBackground: 64,
		DirectMount:   true,
		AllowOther:    true,
		// The kernel enforces the modes fileAttr and rootAttr report;
		// without it allow_other lets every user read and write the volume.
		Options:       []string{"default_permissions"},
		DisableXAttrs: true,
		// Without async direct I/O the kernel turns the loop device's
		// asynchronous writes into synchronous ones, which the loop worker
		// then issues one at a time: a mirrored write's round trip would
		// serialize the whole device.
		ExtraCapabilities: fuse.CAP_ASYNC_DIO,
	})
	if err != nil {
		return nil, fmt.Errorf("fuse mount on %s: %w", dir, err)
	}
	e.server = srv
	if err := closeOnExecFUSE(); err != nil {
		_ = srv.Unmount()
		return nil, fmt.Errorf("fuse mount on %s: %w", dir, err)
	}
	go srv.Serve()
	if err := srv.WaitMount(); err != nil {
		_ = srv.Unmount()
		return nil, fmt.Errorf("fuse mount on %s: %w", dir, err)
	}
	return e, nil
}

// checkMountDir refuses dir unless it is a directory of the daemon's user
// that grants nothing to others, and no user but root and the daemon's
// could replace it: every parent is theirs and writable by no one else
// (or sticky, like /tmp).
func checkMountDir(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.IsDir():
		return fmt.Errorf("mount %s: not a directory", dir)
	case !ok:
		return fmt.Errorf("mount %s: no owner information", dir)
	case int(st.Uid) != os.Geteuid():
		return fmt.Errorf("%w: %s belongs to uid %d; give it to uid %d (chown)", ErrMountReachable, dir, st.Uid, os.Geteuid())
	case fi.Mode().Perm()&0o077 != 0:
		return fmt.Errorf("%w: %s has mode %04o; run: chmod 700 %s", ErrMountReachable, dir, fi.Mode().Perm(), dir)
	}
	for p := filepath.Dir(abs); ; p = filepath.Dir(p) {
		pfi, err := os.Stat(p)
		if err != nil {
			return err
		}
		pst, ok := pfi.Sys().(*syscall.Stat_t)
		if !ok {
			return fmt.Errorf("mount %s: no owner information for %s", dir, p)
		}
		if pst.Uid != 0 && int(pst.Uid) != os.Geteuid() {
			return fmt.Errorf("%w: %s is in %s, which belongs to uid %d: that user can replace it; mount elsewhere", ErrMountReachable, dir, p, pst.Uid)
		}
		if pfi.Mode().Perm()&0o022 != 0 && pfi.Mode()&os.ModeSticky == 0 {
			return fmt.Errorf("%w: %s is in %s (mode %04o), which other users may write: they can replace it; mount elsewhere", ErrMountReachable, dir, p, pfi.Mode().Perm())
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// Path is the path of the exported file.
func (e *FUSE) Path() string { return filepath.Join(e.dir, FileName) }

// Unmount removes the mount; it fails with EBUSY while a loop device or a
// process holds the file open.
func (e *FUSE) Unmount() error {
	err := e.server.Unmount()
	if err == nil {
		e.server.Wait()
	}
	return err
}

// UnmountLazy detaches the mount even if it is busy (umount -l).
func (e *FUSE) UnmountLazy() error {
	if err := e.Unmount(); err == nil {
		return nil
	}
	return unix.Unmount(e.dir, unix.MNT_DETACH)
}

// String names the filesystem in go-fuse's logs.
func (e *FUSE) String() string { return "ldmirror" }

func (e *FUSE) fileAttr(out *fuse.Attr) {
	size := uint64(e.dev.Size())
	*out = fuse.Attr{
		Ino:     fileNode,
		Size:    size,
		Blocks:  (size + 511) / 512,
		Mode:    syscall.S_IFREG | 0o600,
		Nlink:   1,
		Blksize: 4096,
	}
}

func rootAttr(out *fuse.Attr) {
	*out = fuse.Attr{Ino: rootNode, Mode: syscall.S_IFDIR | 0o700, Nlink: 2}
}

// Lookup finds the volume file in the root directory.
func (e *FUSE) Lookup(_ <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	if h.NodeId != rootNode || name != FileName {
		return fuse.ENOENT
	}
	out.NodeId = fileNode
	e.fileAttr(&out.Attr)
	out.SetEntryTimeout(3600e9)
	out.SetAttrTimeout(3600e9)
	return fuse.OK
}

// GetAttr reports the root directory or the volume file.
func (e *FUSE) GetAttr(_ <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	switch in.NodeId {
	case rootNode:
		rootAttr(&out.Attr)
	case fileNode:
		e.fileAttr(&out.Attr)
	default:
		return fuse.ENOENT
	}
	out.SetTimeout(3600e9)
	return fuse.OK
}

// SetAttr refuses to change the volume's size; mode and time changes are
// ignored.
func (e *FUSE) SetAttr(_ <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) fuse.Status {
	if in.NodeId != fileNode {
		return fuse.EPERM
	}
	if sz, ok := in.GetSize(); ok && int64(sz) != e.dev.Size() {
		e.log.Warn("refused to resize the volume", "size", sz)
		return fuse.EPERM
	}
	e.fileAttr(&out.Attr)
	return fuse.OK
}

// Open opens the volume file with direct I/O, so no page cache sits between
// the loop device and the mirror, and with parallel direct writes.
func (e *FUSE) Open(_ <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	if in.NodeId != fileNode {
		return fuse.EISDIR
	}
	if in.Flags&syscall.O_TRUNC != 0 {
		return fuse.EPERM
	}
	out.OpenFlags = fuse.FOPEN_DIRECT_IO | fuse.FOPEN_PARALLEL_DIRECT_WRITES
	return fuse.OK
}

// OpenDir opens the root directory.
func (e *FUSE) OpenDir(_ <-chan struct{}, in *fuse.OpenIn, _ *fuse.OpenOut) fuse.Status {
	if in.NodeId != rootNode {
		return fuse.ENOTDIR
	}
	return fuse.OK
}

// ReadDir lists the volume file.
func (e *FUSE) ReadDir(_ <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	if in.Offset == 0 {
		out.AddDirEntry(fuse.DirEntry{Name: FileName, Ino: fileNode, Mode: syscall.S_IFREG})
	}
	return fuse.OK
}

// Read reads the volume.
func (e *FUSE) Read(_ <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	size := e.dev.Size()
	off := int64(in.Offset)
	if off >= size {
		return fuse.ReadResultData(nil), fuse.OK
	}
	n := min(int64(in.Size), size-off, int64(len(buf)))
	got, err := e.dev.ReadAt(buf[:n], off)
	if err != nil && !errors.Is(err, io.EOF) {
		e.log.Error("read failed", "offset", off, "bytes", n, "err", err)
		return nil, fuse.EIO
	}
	return fuse.ReadResultData(buf[:got]), fuse.OK
}

// Write writes through the device (the Mirror on a primary).
func (e *FUSE) Write(_ <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	n, err := e.dev.WriteAt(data, int64(in.Offset))
	if err != nil {
		return uint32(n), e.errno("write", int64(in.Offset), int64(len(data)), err)
	}
	return uint32(n), fuse.OK
}

// Fsync flushes both hosts. It must never answer ENOSYS: the kernel would
// then skip every later fsync on the mount, and an application's fsync
// would return without anything made durable.
func (e *FUSE) Fsync(_ <-chan struct{}, _ *fuse.FsyncIn) fuse.Status {
	if err := e.dev.Flush(); err != nil {
		return e.errno("flush", 0, 0, err)
	}
	return fuse.OK
}

// Flush is called on close(2); durability is Fsync's job.
func (e *FUSE) Flush(_ <-chan struct{}, _ *fuse.FlushIn) fuse.Status { return fuse.OK }

// Fallocate turns a hole punch (a discard from the loop device) into a Trim.
// Plain allocation inside the volume is a no-op: the file already has its size.
func (e *FUSE) Fallocate(_ <-chan struct{}, in *fuse.FallocateIn) fuse.Status {
	off, n := int64(in.Offset), int64(in.Length)
	if err := blockdev.CheckRange(off, n, e.dev.Size()); err != nil {
		return fuse.Status(syscall.EFBIG)
	}
	switch in.Mode {
	case 0, unix.FALLOC_FL_KEEP_SIZE:
		return fuse.OK
	case unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE:
		if err := e.dev.Trim(off, n); err != nil {
			return e.errno("trim", off, n, err)
		}
		return fuse.OK
	}
	return fuse.Status(syscall.EOPNOTSUPP)
}

// StatFs reports a filesystem holding just the volume.
func (e *FUSE) StatFs(_ <-chan struct{}, _ *fuse.InHeader, out *fuse.StatfsOut) fuse.Status {
	out.Bsize = 4096
	out.Blocks = uint64(e.dev.Size()) / 4096
	out.Files = 1
	out.NameLen = 255
	return fuse.OK
}

// Access allows everything the mode bits allow; the mount is root's.
func (e *FUSE) Access(_ <-chan struct{}, _ *fuse.AccessIn) fuse.Status { return fuse.OK }

func (e *FUSE) errno(op string, off, n int64, err error) fuse.Status {
	e.log.Error(op+" failed", "offset", off, "bytes", n, "err", err)
	switch {
	case errors.Is(err, blockdev.ErrOutOfRange):
		return fuse.Status(syscall.EFBIG)
	case errors.Is(err, blockdev.ErrClosed):
		return fuse.Status(syscall.ESHUTDOWN)
	case errors.Is(err, syscall.ENOSPC):
		return fuse.Status(syscall.ENOSPC)
	}
	return fuse.EIO
}

// closeOnExecFUSE marks this process's /dev/fuse descriptors close-on-exec.
// go-fuse opens the device without O_CLOEXEC, so every process the daemon
// starts (the agent's hooks, and the slapd they start) would inherit it and
// keep the FUSE connection alive after the daemon died: the loop device's
// I/O would then wait forever instead of failing, and slapd with it.
func closeOnExecFUSE() error {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return err
	}
	for _, e := range ents {
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err != nil || target != "/dev/fuse" {
			continue
		}
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
			return fmt.Errorf("mark /dev/fuse close-on-exec: %w", err)
		}
	}
	return nil
}
