package volume

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
	"github.com/ldmirror/ldmirror/resync"
	"golang.org/x/sys/unix"
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

// Create makes a new volume in dir: a backing file of size bytes,
// preallocated unless sparse, and its metadata. A nil id creates a new
// volume identity; the second host of a pair is given the first host's id.
func Create(dir string, size int64, blockSize int, id uuid.UUID, sparse bool) (Meta, error) {
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
	return m, Save(dir, m)
}

// Save replaces meta.json atomically: write a temporary file, fsync it,
// rename it over the old one, fsync the directory.
func Save(dir string, m Meta) error {
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

// Load reads and checks dir's metadata.
func Load(dir string) (Meta, error) {
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

// Lock takes the volume directory for this process, so that a second
// daemon started on it fails before it touches anything. Closing the file
// releases it.
func Lock(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, LockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("volume %s is in use by another ldmirror daemon", dir)
		}
		return nil, fmt.Errorf("lock volume %s: %w", dir, err)
	}
	return f, nil
}
