package blockdev

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestCreateFileAllocates: a backing file is preallocated unless sparse is
// asked for; either way it is exactly the volume's size.
func TestCreateFileAllocates(t *testing.T) {
	for _, tc := range []struct {
		name      string
		sparse    bool
		wantSpace bool
	}{
		{"preallocated", false, true},
		{"sparse", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const size = 8 << 20
			p := filepath.Join(t.TempDir(), "volume.img")
			err := CreateFile(p, size, tc.sparse)
			if errors.Is(err, ErrNoPrealloc) {
				t.Skipf("the test directory's filesystem cannot preallocate: %v", err)
			}
			if err != nil {
				t.Fatal(err)
			}
			st, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			allocated := st.Sys().(*syscall.Stat_t).Blocks * 512
			if st.Size() != size || (allocated >= size) != tc.wantSpace {
				t.Fatalf("size %d, %d bytes allocated; want size %d, all allocated: %v", st.Size(), allocated, size, tc.wantSpace)
			}
		})
	}
}

// TestCreateFileNoSpace: a volume larger than the free space is refused at
// creation with ENOSPC, and no partial file is left behind.
func TestCreateFileNoSpace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=4m"); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	defer unix.Unmount(dir, 0)
	p := filepath.Join(dir, "volume.img")
	err := CreateFile(p, 64<<20, false)
	if !errors.Is(err, unix.ENOSPC) || !strings.Contains(err.Error(), p) {
		t.Fatalf("err = %v, want ENOSPC naming %s", err, p)
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Fatalf("the partial file is still there: %v", err)
	}
}
