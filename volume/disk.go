package volume

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/ldmirror/ldmirror/blockdev"
)

// CheckDisk opens the backing file of the volume in dir, of size bytes,
// for a disk an operator repaired (docs/operations.md, "A failing disk"):
// it must open at the volume's size, read its first and last block and
// flush. It returns the opened device.
func CheckDisk(dir string, size int64) (*blockdev.FileDevice, error) {
	path := filepath.Join(dir, BackingFile)
	dev, err := blockdev.OpenFile(path, size)
	if err != nil {
		return nil, fmt.Errorf("the repaired disk: %w", err)
	}
	buf := make([]byte, 4096)
	for _, off := range []int64{0, size - int64(len(buf))} {
		if _, err := dev.ReadAt(buf, off); err != nil {
			dev.Close()
			return nil, fmt.Errorf("the repaired disk: read %s at offset %d: %s", path, off, blockdev.Describe(err))
		}
	}
	if err := dev.Flush(); err != nil {
		dev.Close()
		return nil, fmt.Errorf("the repaired disk: flush %s: %s", path, blockdev.Describe(err))
	}
	return dev, nil
}

// ErrDiskNotFailed refuses to clear a failure that was not recorded.
var ErrDiskNotFailed = errors.New("the disk did not fail")

// ClearDiskFailure is attach-disk without a daemon: with the volume in dir
// locked, it checks the repaired disk (CheckDisk) and clears the failure
// recorded in meta.json. It returns the failure it cleared.
func ClearDiskFailure(dir string) (string, error) {
	lock, err := Lock(dir)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	m, err := Load(dir)
	if err != nil {
		return "", err
	}
	if m.DiskFailed == "" {
		return "", fmt.Errorf("%w: %s records no disk failure", ErrDiskNotFailed, filepath.Join(dir, MetaFile))
	}
	dev, err := CheckDisk(dir, m.Size)
	if err != nil {
		return "", err
	}
	dev.Close()
	failed := m.DiskFailed
	m.DiskFailed = ""
	return failed, Save(dir, m)
}
