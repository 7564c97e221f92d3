package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/google/uuid"
	"github.com/ldmirror/ldmirror/bitmap"
	"github.com/ldmirror/ldmirror/blockdev"
	"github.com/ldmirror/ldmirror/journal"
	"github.com/ldmirror/ldmirror/resync"
)

// Files in a volume directory.
const (
	MetaFile    = "meta.json"
	BackingFile = "volume.img"
	ControlFile = "control.sock"
	ExportDir   = "export"
	LockFile    = "lock"
	// ScoreboardFile holds the primary's out-of-sync map and activity log.
	ScoreboardFile = "scoreboard"
	// JournalFile is the async primary's write journal; AppliedFile the
	// async secondary's highest applied journal position.
	JournalFile = "journal"
	AppliedFile = "journal.applied"
)

// metaVersion is the version of meta.json this code writes and reads.
const metaVersion = 1

// ErrNoVolume reports a directory without volume metadata.
var ErrNoVolume = errors.New("no ldmirror volume here (run ldmirror init)")

// Meta is a volume's identity, stored in meta.json next to its backing file.
type Meta struct {
	Version    int       `json:"version"`
	VolumeUUID uuid.UUID `json:"volume_uuid"`
	Size       int64     `json:"size_bytes"`
	BlockSize  int       `json:"block_size_bytes"`
	Created    time.Time `json:"created"`
	// Generations decide resync direction and detect split brain.
	Generations resync.Generations `json:"generations"`
	// PrimaryActive is set while this host serves writes as primary and
	// cleared when it stops cleanly: found set at start, the primary crashed
	// and writes in flight then may differ on the peer.
	PrimaryActive bool `json:"primary_active"`
}

// CreateVolume makes a new volume in dir: a backing file of size bytes,
// preallocated unless sparse, and its metadata. A nil id creates a new
// volume identity; the second host of a pair is given the first host's id.
func CreateVolume(dir string, size int64, blockSize int, id uuid.UUID, sparse bool) (Meta, error) {
	if _, err := bitmap.New(size, blockSize); err != nil {
		return Meta{}, err
	}
	if size <= 0 || size%int64(blockSize) != 0 {
		return Meta{}, fmt.Errorf("volume size %d bytes is not a positive multiple of the %d-byte block size", size, blockSize)
	}
	if id == uuid.Nil {
		id = uuid.New()
	}
	m := Meta{
		Version:     metaVersion,
		VolumeUUID:  id,
		Size:        size,
		BlockSize:   blockSize,
		Created:     time.Now().UTC().Truncate(time.Second),
		Generations: resync.InitialGenerations(id),
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return m, err
	}
	if _, err := os.Stat(filepath.Join(dir, MetaFile)); err == nil {
		return m, fmt.Errorf("%s already holds a volume", dir)
	}
	if err := blockdev.CreateFile(filepath.Join(dir, BackingFile), size, sparse); err != nil {
		return m, fmt.Errorf("create backing file: %w", err)
	}
	return m, writeMeta(dir, m)
}

// writeMeta replaces meta.json atomically: write a temporary file, fsync it,
// rename it over the old one, fsync the directory.
func writeMeta(dir string, m Meta) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, MetaFile+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, MetaFile)); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// LoadMeta reads and checks dir's metadata.
func LoadMeta(dir string) (Meta, error) {
	var m Meta
	b, err := os.ReadFile(filepath.Join(dir, MetaFile))
	if errors.Is(err, os.ErrNotExist) {
		return m, fmt.Errorf("%s: %w", dir, ErrNoVolume)
	}
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("%s: %w", filepath.Join(dir, MetaFile), err)
	}
	if m.Version != metaVersion {
		return m, fmt.Errorf("%s: metadata version %d, this ldmirror reads version %d", filepath.Join(dir, MetaFile), m.Version, metaVersion)
	}
	if _, err := bitmap.New(m.Size, m.BlockSize); err != nil {
		return m, fmt.Errorf("%s: %w", filepath.Join(dir, MetaFile), err)
	}
	return m, nil
}

// DiscardLocal resolves a split brain on this host: it gives up the data
// written here since the hosts last agreed. The daemon must not run. At the
// next connection the peer, as primary, copies the whole volume here.
func DiscardLocal(dir string) (Meta, error) {
	m, err := LoadMeta(dir)
	if err != nil {
		return m, err
	}
	lock, err := lockVolume(dir)
	if err != nil {
		return m, err
	}
	defer lock.Close()
	if m, err = LoadMeta(dir); err != nil {
		return m, err
	}
	m.Generations.Discard()
	m.PrimaryActive = false
	// Its out-of-sync map and its journal describe data that no longer
	// counts.
	if err := os.Remove(filepath.Join(dir, ScoreboardFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return m, err
	}
	if _, err := journal.Discard(filepath.Join(dir, JournalFile), "the local data was discarded (ldmirror resolve --discard-local)"); err != nil {
		return m, err
	}
	return m, writeMeta(dir, m)
}
