package cluster

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
)

// lockTimeout bounds the wait for the bolt file lock: a second process on
// the same data directory fails instead of hanging.
const lockTimeout = time.Second

// store is a member's durable raft state: one bolt file for the log and the
// stable store (term, vote), and a directory of snapshots.
type store struct {
	path    string
	snapDir string
	bolt    *raftboltdb.BoltStore
	snaps   *raft.FileSnapshotStore
}

// openStore opens dir's raft state after checking it. Raft itself would
// trip over damage later and less clearly: a damaged bolt page panics in
// whichever raft goroutine reads it, and raft silently skips a snapshot
// whose metadata does not parse, which after log truncation would rebuild
// a wrong state. So every page, log entry and snapshot is read here, and
// damage fails Open with ErrCorruptStore naming the file.
func openStore(dir string, logger *hclogger) (*store, error) {
	s := &store{path: filepath.Join(dir, StoreFile), snapDir: filepath.Join(dir, SnapshotDir)}
	if err := checkBolt(s.path); err != nil {
		return nil, err
	}
	var err error
	s.bolt, err = openBolt(s.path)
	if err != nil {
		return nil, err
	}
	if err := checkLog(s.path, s.bolt); err != nil {
		s.bolt.Close()
		return nil, err
	}
	s.snaps, err = raft.NewFileSnapshotStoreWithLogger(dir, retainSnapshots, logger.Named("snapshot"))
	if err != nil {
		s.bolt.Close()
		return nil, fmt.Errorf("raft snapshot store %s: %w", s.snapDir, err)
	}
	if err := checkSnapshots(s.snapDir, s.snaps); err != nil {
		s.bolt.Close()
		return nil, err
	}
	return s, nil
}

func (s *store) close() error { return s.bolt.Close() }

func openBolt(path string) (_ *raftboltdb.BoltStore, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: %s: %v", ErrCorruptStore, path, p)
		}
	}()
	b, err := raftboltdb.New(raftboltdb.Options{Path: path, BoltOptions: &bbolt.Options{Timeout: lockTimeout}})
	if err != nil {
		return nil, boltError(path, err)
	}
	return b, nil
}

func boltError(path string, err error) error {
	if errors.Is(err, bbolt.ErrTimeout) {
		return fmt.Errorf("raft store %s is locked by another process (is another ldmirror running on this directory?)", path)
	}
	return fmt.Errorf("%w: %s: %v", ErrCorruptStore, path, err)
}

// checkBolt opens an existing bolt file read-only and reads every key and
// value of every bucket, on this goroutine: bbolt checks each page it
// visits and panics on a damaged one, which is recovered here into an
// error. (bbolt's own Tx.Check runs on a goroutine of its own, where a
// panic cannot be recovered.)
func checkBolt(path string) (err error) {
	// No file, or an empty one (bbolt had not written its first pages when
	// the host died): a fresh store, nothing to check.
	if fi, err := os.Stat(path); errors.Is(err, os.ErrNotExist) || (err == nil && fi.Size() == 0) {
		return nil
	}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: %s: %v", ErrCorruptStore, path, p)
		}
	}()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: lockTimeout, ReadOnly: true})
	if err != nil {
		return boltError(path, err)
	}
	defer db.Close()
	err = db.View(func(tx *bbolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bbolt.Bucket) error {
			return walkBucket(b)
		})
	})
	if err != nil {
		return boltError(path, err)
	}
	return nil
}

func walkBucket(b *bbolt.Bucket) error {
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if v == nil {
			if nb := b.Bucket(k); nb != nil {
				if err := walkBucket(nb); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// checkLog decodes every raft log entry, and every command in it, on this
// goroutine. Bolt has no checksums of its own over values, so this is where
// damage inside an entry shows, rather than as one member refusing a
// command the others applied. The log is short (TrailingLogs plus up to
// SnapshotThreshold entries), so this is cheap.
func checkLog(path string, b *raftboltdb.BoltStore) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: %s: log: %v", ErrCorruptStore, path, p)
		}
	}()
	first, err := b.FirstIndex()
	if err != nil {
		return fmt.Errorf("%w: %s: first log index: %v", ErrCorruptStore, path, err)
	}
	last, err := b.LastIndex()
	if err != nil {
		return fmt.Errorf("%w: %s: last log index: %v", ErrCorruptStore, path, err)
	}
	for i := first; first > 0 && i <= last; i++ {
		var l raft.Log
		if err := b.GetLog(i, &l); err != nil {
			return fmt.Errorf("%w: %s: log entry %d: %v", ErrCorruptStore, path, i, err)
		}
		if l.Type != raft.LogCommand {
			continue
		}
		if _, err := decodeCommand(l.Data); err != nil {
			return fmt.Errorf("%w: %s: log entry %d: %v", ErrCorruptStore, path, i, err)
		}
	}
	return nil
}

// checkSnapshots opens every complete snapshot: raft's Open verifies the
// metadata and the CRC, and decoding checks that the content is ours.
func checkSnapshots(dir string, snaps *raft.FileSnapshotStore) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("raft snapshot store %s: %w", dir, err)
	}
	for _, e := range entries {
		// Temporary directories are snapshots that never completed; raft
		// ignores them and so may we.
		if !e.IsDir() || strings.HasSuffix(e.Name(), ".tmp") {
			continue
		}
		path := filepath.Join(dir, e.Name())
		_, rc, err := snaps.Open(e.Name())
		if err != nil {
			return fmt.Errorf("%w: snapshot %s: %v", ErrCorruptStore, path, err)
		}
		b, err := io.ReadAll(io.LimitReader(rc, maxSnapshot+1))
		rc.Close()
		if err == nil {
			_, err = decodeSnapshot(b)
		}
		if err != nil {
			return fmt.Errorf("%w: snapshot %s: %v", ErrCorruptStore, path, err)
		}
	}
	return nil
}
