package fileperm

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckPrivate(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		mode os.FileMode
		ok   bool
	}{{0o600, true}, {0o400, true}, {0o640, false}, {0o604, false}, {0o620, false}, {0o602, false}, {0o644, false}} {
		p := filepath.Join(dir, "f")
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, tc.mode); err != nil {
			t.Fatal(err)
		}
		err := CheckPrivate(p)
		if tc.ok != (err == nil) {
			t.Fatalf("mode %04o: %v, want ok=%t", tc.mode, err, tc.ok)
		}
		if err != nil && (!errors.Is(err, ErrReadable) || !strings.Contains(err.Error(), "chmod 600 "+p)) {
			t.Fatalf("mode %04o: %v: want ErrReadable naming the fix", tc.mode, err)
		}
	}
	if err := CheckPrivate(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

func TestCheckPrivateDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "d")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := CheckPrivateDir(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := CheckPrivateDir(dir); !errors.Is(err, ErrReadable) || !strings.Contains(err.Error(), "chmod 700 "+dir) {
		t.Fatalf("0750: %v", err)
	}
}
