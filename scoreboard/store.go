package scoreboard

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Store is where the metadata lives. Sync must make every completed WriteAt
// durable; until then a crash may lose, reorder or tear unsynced writes, and
// the format is built to survive exactly that. *os.File satisfies it (with a
// full fsync); Create and Open use a file store that syncs with fdatasync.
type Store interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
}

// fileStore is a metadata file. The file has its full (sparse) size from
// Create, so fdatasync is enough: it writes the data and the metadata needed
// to read it back (block allocation), not timestamps.
type fileStore struct{ *os.File }

func (f fileStore) Sync() error {
	for {
		err := unix.Fdatasync(int(f.Fd()))
		if err != unix.EINTR {
			return err
		}
	}
}

// lock takes an exclusive advisory lock on the metadata file for as long as
// it is open: two writers of one scoreboard would each trust a state the
// other overwrites.
func lock(f *os.File) error {
	err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		return fmt.Errorf("scoreboard %s: %w", f.Name(), ErrInUse)
	}
	if err != nil {
		return fmt.Errorf("scoreboard %s: lock: %w", f.Name(), err)
	}
	return nil
}
