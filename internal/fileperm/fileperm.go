// Package fileperm refuses files that hold secrets (private keys, the
// shared secret, the LDAP agent's configuration with its passwords and root
// hook commands) when other users may read them.
package fileperm

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// ErrReadable reports a secret file that its group or other users may read
// or write.
var ErrReadable = errors.New("file holding secrets is open to other users")

// CheckPrivate returns an error naming path and the fix unless the file
// grants no permission to its group or to others. It follows symbolic
// links: what matters is the file that is read.
func CheckPrivate(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	return checkMode(path, fi.Mode())
}

func checkMode(path string, m fs.FileMode) error {
	if m.Perm()&0o077 != 0 {
		return fmt.Errorf("%w: %s has mode %04o; run: chmod 600 %s", ErrReadable, path, m.Perm(), path)
	}
	return nil
}

// CheckPrivateDir is CheckPrivate for a directory that holds secrets: it
// must grant nothing to its group or to others.
func CheckPrivateDir(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", path)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("%w: directory %s has mode %04o; run: chmod 700 %s", ErrReadable, path, fi.Mode().Perm(), path)
	}
	return nil
}
