package blockdev

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"testing"
)

func TestFailureLatchesTheFirstError(t *testing.T) {
	f := NewFailure()
	if f.Latch(nil) || f.Latch(fmt.Errorf("close: %w", ErrClosed)) || f.Err() != nil {
		t.Fatal("nil or a closed device latched a failure")
	}
	first := &os.PathError{Op: "write", Path: "volume.img", Err: syscall.ENOSPC}
	if !f.Latch(first) {
		t.Fatal("the first I/O error did not latch")
	}
	if f.Latch(&os.PathError{Op: "write", Path: "volume.img", Err: syscall.EIO}) {
		t.Fatal("a second error latched again")
	}
	select {
	case <-f.Done():
	default:
		t.Fatal("Done not closed after the failure")
	}
	err := f.Err()
	if !errors.Is(err, ErrDiskFailed) {
		t.Fatalf("Err() = %v, want ErrDiskFailed", err)
	}
	if want := "disk failed: write volume.img: no space left on device (ENOSPC)"; err.Error() != want {
		t.Fatalf("Err() = %q, want %q", err, want)
	}
}
