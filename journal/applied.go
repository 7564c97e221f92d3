package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Position is a place in one journal: the secondary's durable applied
// position says that every record of journal ID up to Seq is applied and
// durable on its disk.
type Position struct {
	ID  uint64 // the journal's identity; 0: none
	Seq uint64
}

// AppliedFile persists the secondary's applied position (docs/invariants.md,
// invariant 8): a small file of two checksummed slots, written in turn, so a crash
// in the middle of a write leaves the previous position.
type AppliedFile struct {
	mu   sync.Mutex
	f    *os.File
	gen  uint64
	slot int
	pos  Position
}

const (
	appliedMagic = 0x4c444a41 // "LDJA"
	appliedSlot  = 512
	appliedSize  = 40 // magic, 4 reserved, gen, id, seq, crc32c, 4 reserved
)

// OpenAppliedFile opens the applied-position file at path, creating it
// (with no position) if it does not exist. A file with no valid slot is an
// ErrCorrupt error.
func OpenAppliedFile(path string) (*AppliedFile, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	a := &AppliedFile{f: f}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if st.Size() == 0 {
		if err := a.Store(Position{}); err != nil {
			f.Close()
			return nil, fmt.Errorf("create %s: %w", path, err)
		}
		if err := syncDir(path); err != nil {
			f.Close()
			return nil, err
		}
		return a, nil
	}
	found := false
	var errs []error
	for slot := range 2 {
		var b [appliedSize]byte
		if _, err := f.ReadAt(b[:], int64(slot)*appliedSlot); err != nil {
			errs = append(errs, fmt.Errorf("slot %d: %w", slot, err))
			continue
		}
		if binary.BigEndian.Uint32(b[0:4]) != appliedMagic || crc32.Checksum(b[:32], castagnoli) != binary.BigEndian.Uint32(b[32:36]) {
			errs = append(errs, fmt.Errorf("slot %d: bad magic or checksum", slot))
			continue
		}
		gen := binary.BigEndian.Uint64(b[8:16])
		if !found || gen > a.gen {
			found = true
			a.gen, a.slot = gen, slot
			a.pos = Position{ID: binary.BigEndian.Uint64(b[16:24]), Seq: binary.BigEndian.Uint64(b[24:32])}
		}
	}
	if !found {
		f.Close()
		return nil, fmt.Errorf("%w: applied-position file %s: %w", ErrCorrupt, path, errors.Join(errs...))
	}
	return a, nil
}

// Position is the last position stored.
func (a *AppliedFile) Position() Position {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.pos
}

// Store makes p the durable applied position; the caller has made the
// records up to it durable on its disk first. Storing the position already
// held costs nothing.
func (a *AppliedFile) Store(p Position) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if p == a.pos && a.gen > 0 {
		return nil
	}
	slot := 1 - a.slot
	if a.gen == 0 {
		slot = 0
	}
	var b [appliedSize]byte
	binary.BigEndian.PutUint32(b[0:4], appliedMagic)
	binary.BigEndian.PutUint64(b[8:16], a.gen+1)
	binary.BigEndian.PutUint64(b[16:24], p.ID)
	binary.BigEndian.PutUint64(b[24:32], p.Seq)
	binary.BigEndian.PutUint32(b[32:36], crc32.Checksum(b[:32], castagnoli))
	if _, err := a.f.WriteAt(b[:], int64(slot)*appliedSlot); err != nil {
		return err
	}
	if err := unix.Fdatasync(int(a.f.Fd())); err != nil {
		return err
	}
	a.gen++
	a.slot = slot
	a.pos = p
	return nil
}

// Close closes the file.
func (a *AppliedFile) Close() error { return a.f.Close() }
