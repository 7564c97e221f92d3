package volume

import (
	"crypto/sha256"
	"encoding/hex"
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
	// StageFile is a resync target's staging log (package stage).
	StageFile = "resync.stage"
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
	// DiskFailed, if set, is the I/O error after which this host stopped
	// using its disk (docs/operations.md, "A failing disk"): it takes no
	// writes and serves no term until `ldmirror attach-disk` clears it.
	DiskFailed string `json:"disk_failed,omitempty"`
	// Checksum is SHA-256 of the file's JSON with this field empty (hex):
	// the generation identifiers decide resync direction and detect split
	// brain, so a changed byte must be found, not acted on.
	Checksum string `json:"checksum,omitempty"`
}

// ErrDamaged reports a meta.json whose content does not match its checksum.
var ErrDamaged = errors.New("volume metadata is damaged")

// sum is the checksum of m, its Checksum field aside.
func (m Meta) sum() (string, error) {
	m.Checksum = ""
	b, err := json.Marshal(m)
	if err != nil {
		return "", err
	}
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:]), nil
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
	if _, err := os.Stat(filepath.Join(dir, BackingFile)); err == nil {
		return m, fmt.Errorf("%s holds a backing file (%s) but no metadata: to keep the file and take the peer's data, run ldmirror init --repair-metadata with the peer's --volume-uuid and --size; to start over, remove %s",
			dir, BackingFile, filepath.Join(dir, BackingFile))
	}
	if err := blockdev.CreateFile(filepath.Join(dir, BackingFile), size, sparse); err != nil {
		return m, fmt.Errorf("create backing file: %w", err)
	}
	return m, Save(dir, m)
}

// Save replaces meta.json atomically: write a temporary file, fsync it,
// rename it over the old one, fsync the directory.
func Save(dir string, m Meta) error {
	sum, err := m.sum()
	if err != nil {
		return err
	}
	m.Checksum = sum
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
	path := filepath.Join(dir, MetaFile)
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("%s: %w: %v; %s", path, ErrDamaged, err, repairHint)
	}
	// A volume made before the checksum has none; the next Save adds it.
	if m.Checksum != "" {
		if sum, err := m.sum(); err != nil || sum != m.Checksum {
			return m, fmt.Errorf("%s: %w: its checksum does not match (what changed cannot be known); %s", path, ErrDamaged, repairHint)
		}
	}
	if m.Version != metaVersion {
		return m, fmt.Errorf("%s: metadata version %d, this ldmirror reads version %d", filepath.Join(dir, MetaFile), m.Version, metaVersion)
	}
	if _, err := bitmap.New(m.Size, m.BlockSize); err != nil {
		return m, fmt.Errorf("%s: %w", filepath.Join(dir, MetaFile), err)
	}
	return m, nil
}

// repairHint is how an operator recovers from damaged metadata.
const repairHint = "rebuild it from the peer with ldmirror init --repair-metadata --dir DIR --volume-uuid <the peer's> --size <the peer's> (the peer then resyncs every block here), or resolve the split brain first if there is one"

// Repair rewrites the metadata of the volume in dir, whose backing file
// is kept, as a copy of the peer's volume id of size bytes that holds none
// of its data: its generation is discarded, so the peer, as primary, copies
// every block here. For a meta.json that is damaged or lost.
func Repair(dir string, size int64, blockSize int, id uuid.UUID) (Meta, error) {
	if id == uuid.Nil {
		return Meta{}, errors.New("repairing metadata needs the peer's volume UUID")
	}
	st, err := os.Stat(filepath.Join(dir, BackingFile))
	if err != nil {
		return Meta{}, fmt.Errorf("repair metadata: %w", err)
	}
	if st.Size() != size {
		return Meta{}, fmt.Errorf("repair metadata: %w: %s is %d bytes, --size is %d", blockdev.ErrWrongSize, filepath.Join(dir, BackingFile), st.Size(), size)
	}
	if _, err := bitmap.New(size, blockSize); err != nil {
		return Meta{}, err
	}
	lock, err := Lock(dir)
	if err != nil {
		return Meta{}, err
	}
	defer lock.Close()
	m := Meta{Version: metaVersion, VolumeUUID: id, Size: size, BlockSize: blockSize, Created: time.Now().UTC().Truncate(time.Second)}
	m.Generations.Discard()
	return m, Save(dir, m)
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
