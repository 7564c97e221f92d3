package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/internal/pkitest"
	"github.com/ldmirror/ldmirror/internal/poll"
)

// TestConsistentAfterRestart: a member restarted from a snapshot that names
// it primary, while the others moved on by several epochs, replays old
// states; Consistent returns only once its own copy has caught up, and
// its State and Watch do not go back from there.
func TestConsistentAfterRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("restarts a member")
	}
	ms := startTrio(t, "a", nil)
	ctx := ctxFor(t, 20*time.Second)
	a, b := ms["a"].c, ms["b"].c
	makePrimary(t, ctx, ms, a, "a")
	if _, err := a.TransferPrimary(ctx, "a", "b", 1); err != nil {
		t.Fatal(err)
	}
	converged(t, ms, func(s VolumeState) bool { return s.Primary == "b" })
	if err := b.Snapshot(ctx); err != nil {
		t.Fatal(err)
	}
	ms["b"].stop()
	primary := "b"
	for e := Epoch(2); e < 8; e += 2 {
		if _, err := a.Demote(ctx, primary, e); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Promote(ctx, "a", false, ""); err != nil {
			t.Fatal(err)
		}
		primary = "a"
	}
	leader, err := a.Consistent(ctx)
	if err != nil || leader.Primary != "a" || leader.Epoch != 8 {
		t.Fatalf("leader's state: %+v, %v; want a primary in epoch 8", leader, err)
	}

	ms["b"].start()
	b = ms["b"].c
	s, err := b.Consistent(ctx)
	local := b.State()
	if err != nil || s.Index < leader.Index || s.Primary != "a" || s.Epoch != 8 {
		t.Fatalf("consistent read on the restarted member: %+v, %v; want a primary in epoch 8, index >= %d", s, err, leader.Index)
	}
	if local.Index < s.Index || local.Epoch != 8 {
		t.Fatalf("after Consistent returned index %d, the member's own copy is at index %d, epoch %d", s.Index, local.Index, local.Epoch)
	}
	if w := <-b.Watch(ctx); w.Index < s.Index {
		t.Fatalf("after Consistent returned index %d, Watch starts at index %d", s.Index, w.Index)
	}
}

// TestRestartAll: every member stops; the log and snapshots bring the same
// state back.
func TestRestartAll(t *testing.T) {
	if testing.Short() {
		t.Skip("restarts a whole cluster")
	}
	ms := startTrio(t, "a", func(c *Config) { c.SnapshotThreshold, c.TrailingLogs = 8, 4 })
	ctx := ctxFor(t, 30*time.Second)
	a := ms["a"].c
	makePrimary(t, ctx, ms, ms["b"].c, "a") // submitted on a follower
	for seq := uint64(1); seq <= 30; seq++ {
		if err := ms["b"].c.AckSeq(ctx, "b", 1, seq); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.MarkPeerOutdated(ctx, 1, "b"); err != nil {
		t.Fatal(err)
	}
	if _, err := ms["b"].c.Promote(ctx, "b", true, "drill"); err != nil {
		t.Fatal(err)
	}
	before, err := a.Consistent(ctx)
	if err != nil {
		t.Fatal(err)
	}
	converged(t, ms, func(s VolumeState) bool { return s.Index >= before.Index })
	for _, m := range ms {
		if err := m.c.Snapshot(ctx); err != nil {
			t.Fatalf("snapshot %s: %v", m.cfg.NodeID, err)
		}
	}
	if err := a.AckSeq(ctx, "a", 2, 3); err != nil { // an entry after the snapshot
		t.Fatal(err)
	}
	before, err = a.Consistent(ctx)
	if err != nil {
		t.Fatal(err)
	}
	converged(t, ms, func(s VolumeState) bool { return s.Index >= before.Index })

	for _, m := range ms {
		m.stop()
	}
	for _, m := range ms {
		snaps, _ := os.ReadDir(filepath.Join(m.cfg.DataDir, SnapshotDir))
		if len(snaps) == 0 {
			t.Fatalf("%s has no snapshot on disk", m.cfg.NodeID)
		}
		m.start()
	}
	after, err := ms["w"].c.Consistent(ctx)
	if err != nil {
		t.Fatalf("read after restart: %v", err)
	}
	if fmt.Sprintf("%+v", stripIndex(after)) != fmt.Sprintf("%+v", stripIndex(before)) {
		t.Fatalf("state changed across restart:\nbefore %+v\n after %+v", before, after)
	}
	if after.Epoch != 2 || after.ForcedPromotions != 2 {
		t.Fatalf("restored state %+v", after)
	}
	converged(t, ms, func(s VolumeState) bool {
		return fmt.Sprintf("%+v", stripIndex(s)) == fmt.Sprintf("%+v", stripIndex(before))
	})
	// And the restarted cluster still commits.
	if _, err := ms["a"].c.Demote(ctx, "b", 2); err != nil {
		t.Fatalf("commit after restart: %v", err)
	}
}

// TestCorruptStore: a damaged bolt file or snapshot fails Open with
// ErrCorruptStore and the file's name, instead of a panic or a wrong state.
func TestCorruptStore(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and damages raft stores")
	}
	// seed makes a one-member cluster with some entries and a snapshot.
	seed := func(t *testing.T) Config {
		cfg := testConfig(t, pkitest.New(t), "a", false)
		m := startMember(t, cfg)
		ctx := ctxFor(t, 10*time.Second)
		if err := m.c.Bootstrap(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := m.c.Promote(ctx, "a", true, "seed"); err != nil {
			t.Fatal(err)
		}
		if err := m.c.Snapshot(ctx); err != nil {
			t.Fatal(err)
		}
		m.stop()
		return m.cfg
	}
	damage := func(t *testing.T, path string, off int64, n int) {
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt([]byte(strings.Repeat("\xa5", n)), off); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("bolt meta pages", func(t *testing.T) {
		cfg := seed(t)
		path := filepath.Join(cfg.DataDir, StoreFile)
		damage(t, path, 0, 8192)
		_, err := Open(cfg)
		if !errors.Is(err, ErrCorruptStore) || !strings.Contains(err.Error(), path) {
			t.Fatalf("open: %v, want ErrCorruptStore naming %s", err, path)
		}
	})
	t.Run("bolt data pages", func(t *testing.T) {
		cfg := seed(t)
		path := filepath.Join(cfg.DataDir, StoreFile)
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		damage(t, path, 8192, int(fi.Size())-8192) // all but the meta pages
		_, err = Open(cfg)
		if !errors.Is(err, ErrCorruptStore) || !strings.Contains(err.Error(), path) {
			t.Fatalf("open: %v, want ErrCorruptStore naming %s", err, path)
		}
	})
	t.Run("log entry", func(t *testing.T) {
		cfg := seed(t)
		path := filepath.Join(cfg.DataDir, StoreFile)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		i := bytes.Index(b, []byte("\x01{\"op\":\"promote\""))
		if i < 0 {
			t.Fatal("no promote command found in the store")
		}
		damage(t, path, int64(i+1), 1) // the JSON no longer parses
		_, err = Open(cfg)
		if !errors.Is(err, ErrCorruptStore) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "log entry") {
			t.Fatalf("open: %v, want ErrCorruptStore naming %s and the log entry", err, path)
		}
	})
	t.Run("bolt truncated", func(t *testing.T) {
		cfg := seed(t)
		path := filepath.Join(cfg.DataDir, StoreFile)
		if err := os.Truncate(path, 100); err != nil {
			t.Fatal(err)
		}
		_, err := Open(cfg)
		if !errors.Is(err, ErrCorruptStore) || !strings.Contains(err.Error(), path) {
			t.Fatalf("open: %v, want ErrCorruptStore naming %s", err, path)
		}
	})
	t.Run("snapshot state", func(t *testing.T) {
		cfg := seed(t)
		dirs, err := filepath.Glob(filepath.Join(cfg.DataDir, SnapshotDir, "*", "state.bin"))
		if err != nil || len(dirs) == 0 {
			t.Fatalf("no snapshot to damage: %v", err)
		}
		damage(t, dirs[0], 0, 4)
		_, err = Open(cfg)
		if !errors.Is(err, ErrCorruptStore) || !strings.Contains(err.Error(), filepath.Dir(dirs[0])) {
			t.Fatalf("open: %v, want ErrCorruptStore naming %s", err, filepath.Dir(dirs[0]))
		}
	})
	t.Run("snapshot meta", func(t *testing.T) {
		cfg := seed(t)
		metas, _ := filepath.Glob(filepath.Join(cfg.DataDir, SnapshotDir, "*", "meta.json"))
		if len(metas) == 0 {
			t.Fatal("no snapshot metadata to damage")
		}
		damage(t, metas[0], 0, 1)
		_, err := Open(cfg)
		if !errors.Is(err, ErrCorruptStore) || !strings.Contains(err.Error(), filepath.Dir(metas[0])) {
			t.Fatalf("open: %v, want ErrCorruptStore naming %s", err, filepath.Dir(metas[0]))
		}
	})
	t.Run("intact store reopens", func(t *testing.T) {
		cfg := seed(t)
		m := startMember(t, cfg)
		poll.Until(t, 5*time.Second, "state to come back", func() bool {
			h, _ := m.c.State().Host("a")
			return h.Disk == DiskUpToDate
		})
	})
	t.Run("empty store file is a fresh store", func(t *testing.T) {
		cfg := testConfig(t, pkitest.New(t), "a", false)
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(cfg.DataDir, StoreFile), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		m := startMember(t, cfg)
		if err := m.c.Bootstrap(ctxFor(t, 10*time.Second)); err != nil {
			t.Fatalf("bootstrap on an empty store file: %v", err)
		}
	})
	t.Run("locked by another member", func(t *testing.T) {
		cfg := seed(t)
		startMember(t, cfg)
		cfg.BindAddr = "127.0.0.1:0"
		_, err := Open(cfg)
		if err == nil || !strings.Contains(err.Error(), "locked") {
			t.Fatalf("second open of one directory: %v, want a lock error", err)
		}
	})
}
