package blockdev

import (
	"errors"
	"fmt"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrDiskFailed refuses I/O on a host whose disk failed: after its first
// I/O error the host stops using the disk until an operator attaches it
// again (docs/operations.md, "A failing disk"), as DRBD's on-io-error
// detach does.
var ErrDiskFailed = errors.New("disk failed")

// Failure latches a disk's first I/O error. The zero value is not
// usable: make one with NewFailure.
type Failure struct {
	once sync.Once
	err  error
	done chan struct{}
}

// NewFailure returns a Failure that has not latched.
func NewFailure() *Failure { return &Failure{done: make(chan struct{})} }

// Latch records err, an I/O error of the disk, if it is the first; it
// reports whether it was. A closed device is not a failure.
func (f *Failure) Latch(err error) bool {
	if err == nil || errors.Is(err, ErrClosed) {
		return false
	}
	first := false
	f.once.Do(func() {
		f.err = fmt.Errorf("%w: %s", ErrDiskFailed, Describe(err))
		close(f.done)
		first = true
	})
	return first
}

// Done is closed once the disk failed.
func (f *Failure) Done() <-chan struct{} { return f.done }

// Err is the latched failure (ErrDiskFailed wrapping the first error), or
// nil.
func (f *Failure) Err() error {
	select {
	case <-f.done:
		return f.err
	default:
		return nil
	}
}

// Describe is err's text with the errno's name, e.g. "write volume.img:
// no space left on device (ENOSPC)", so that an operator can search for
// it.
func Describe(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		if name := unix.ErrnoName(errno); name != "" {
			return err.Error() + " (" + name + ")"
		}
	}
	return err.Error()
}
