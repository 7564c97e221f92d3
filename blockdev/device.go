package blockdev

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Device is a fixed-size block device. Its methods are safe for concurrent
// use; like os.File they block for one I/O and take no context: the Mirror
// bounds the one wait that can be long (the peer's ack) with its timeout.
type Device interface {
	io.ReaderAt
	io.WriterAt
	// Flush makes every completed write durable.
	Flush() error
	// Trim discards n bytes at off; they read back as zeros.
	Trim(off, n int64) error
	// Size is the device size in bytes.
	Size() int64
	Close() error
}

// ErrOutOfRange reports an I/O that does not fit inside the device.
var ErrOutOfRange = errors.New("I/O outside the volume")

// ErrWrongSize reports a backing file whose size differs from the volume's.
var ErrWrongSize = errors.New("backing file has the wrong size")

// ErrClosed reports I/O on a volume that was closed.
var ErrClosed = errors.New("volume is closed")

// CheckRange validates n bytes at off against a device of size bytes.
func CheckRange(off, n, size int64) error {
	if off < 0 || n < 0 || off > size || n > size-off {
		return fmt.Errorf("%w: %d bytes at offset %d, volume is %d bytes", ErrOutOfRange, n, off, size)
	}
	return nil
}

// FileDevice is a Device backed by a regular file of exactly the volume's size.
type FileDevice struct {
	f    *os.File
	size int64
}

// OpenFile opens the backing file at path, which must be size bytes long.
func OpenFile(path string, size int64) (*FileDevice, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if st.Size() != size {
		f.Close()
		return nil, fmt.Errorf("%w: %s is %d bytes, the volume is %d bytes", ErrWrongSize, path, st.Size(), size)
	}
	return &FileDevice{f: f, size: size}, nil
}

// ErrNoPrealloc reports a filesystem that cannot preallocate a backing file.
var ErrNoPrealloc = errors.New("the filesystem cannot preallocate the backing file")

// CreateFile creates a backing file of size bytes; it fails if path exists.
// The file's space is allocated now (fallocate), so writes never find the
// host's filesystem full and do not pay for block allocation; a sparse file
// allocates as it is written instead.
func CreateFile(path string, size int64, sparse bool) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if sparse {
		err = f.Truncate(size)
	} else if err = unix.Fallocate(int(f.Fd()), 0, 0, size); errors.Is(err, unix.EOPNOTSUPP) {
		err = fmt.Errorf("%w (fallocate: %w); create a sparse one instead", ErrNoPrealloc, err)
	} else if errors.Is(err, unix.ENOSPC) {
		err = fmt.Errorf("allocate %d bytes for %s: %w", size, path, err)
	}
	if err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// ReadAt reads from the backing file; reads past the end are short with io.EOF.
func (d *FileDevice) ReadAt(p []byte, off int64) (int, error) { return d.f.ReadAt(p, off) }

// WriteAt writes inside the volume; a write past its end is refused.
func (d *FileDevice) WriteAt(p []byte, off int64) (int, error) {
	if err := CheckRange(off, int64(len(p)), d.size); err != nil {
		return 0, err
	}
	return d.f.WriteAt(p, off)
}

// Flush makes completed writes durable with fdatasync.
func (d *FileDevice) Flush() error { return unix.Fdatasync(int(d.f.Fd())) }

// Trim punches a hole, keeping the file size.
func (d *FileDevice) Trim(off, n int64) error {
	if err := CheckRange(off, n, d.size); err != nil {
		return err
	}
	return unix.Fallocate(int(d.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}

// Size is the volume size in bytes.
func (d *FileDevice) Size() int64 { return d.size }

// Close closes the backing file.
func (d *FileDevice) Close() error { return d.f.Close() }
