package node

import (
	"errors"
	"os"
	"path/filepath"

	"github.com/ldmirror/ldmirror/journal"
	"github.com/ldmirror/ldmirror/volume"
)

// DiscardLocal resolves a split brain on this host: it gives up the data
// written here since the hosts last agreed. The daemon must not run. At the
// next connection the peer, as primary, copies the whole volume here.
func DiscardLocal(dir string) (volume.Meta, error) {
	m, err := volume.Load(dir)
	if err != nil {
		return m, err
	}
	lock, err := volume.Lock(dir)
	if err != nil {
		return m, err
	}
	defer lock.Close()
	if m, err = volume.Load(dir); err != nil {
		return m, err
	}
	m.Generations.Discard()
	m.PrimaryActive = false
	// Its out-of-sync map, a resync it staged and its journal describe
	// data that no longer counts.
	for _, f := range []string{volume.ScoreboardFile, volume.StageFile} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return m, err
		}
	}
	if _, err := journal.Discard(filepath.Join(dir, volume.JournalFile), "the local data was discarded (ldmirror resolve --discard-local)"); err != nil {
		return m, err
	}
	return m, volume.Save(dir, m)
}
