package mirror

import (
	"bytes"
	"context"
	"errors"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/blockdev"
	"github.com/ldmirror/ldmirror/internal/poll"

	"github.com/RoaringBitmap/roaring/v2"
)

// fenceLog records the control-plane commits a Mirror makes, in order.
type fenceLog struct {
	mu     sync.Mutex
	events []string
}

func (l *fenceLog) add(e string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, e)
}

func (l *fenceLog) count(e string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, x := range l.events {
		if x == e {
			n++
		}
	}
	return n
}

func (l *fenceLog) list() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.events)
}

func writeBlock(t *testing.T, m *Mirror, blk int64) {
	t.Helper()
	if _, err := m.WriteAt(pattern(blk), blk*4096); err != nil {
		t.Fatalf("write block %d: %v", blk, err)
	}
}

// TestFenceSuspendsUnshippedWrites: without its peer, a write is not
// acknowledged until the fence committed; once per disconnection.
func TestFenceSuspendsUnshippedWrites(t *testing.T) {
	var calls atomic.Int32
	release := make(chan struct{})
	p := newPairWith(t, volSize, Config{Fence: func(ctx context.Context) error {
		calls.Add(1)
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}})
	sess := p.sess
	// Connected: writes ship and never fence.
	if _, err := p.mirror.WriteAt(make([]byte, 4096), 0); err != nil || calls.Load() != 0 {
		t.Fatalf("connected write: %v, %d fence calls", err, calls.Load())
	}
	p.mirror.SetPeer(nil)
	done := make(chan error, 1)
	go func() { _, err := p.mirror.WriteAt(make([]byte, 4096), 4096); done <- err }()
	poll.Until(t, 5*time.Second, "the condition", func() bool { return calls.Load() == 1 })
	select {
	case err := <-done:
		t.Fatalf("a write returned (%v) before the peer was marked outdated", err)
	default:
	}
	if !p.mirror.Status().Suspended {
		t.Fatal("status does not say suspended")
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := p.mirror.WriteAt(make([]byte, 4096), 8192); err != nil || calls.Load() != 1 {
		t.Fatalf("second write: %v, %d fence calls; want no new call", err, calls.Load())
	}
	// A new connection, then a new loss: fenced again.
	p.mirror.SetPeer(sess)
	p.mirror.SetPeer(nil)
	if _, err := p.mirror.WriteAt(make([]byte, 4096), 12288); err != nil || calls.Load() != 2 {
		t.Fatalf("write after a second loss: %v, %d fence calls; want 2", err, calls.Load())
	}
}

func TestFenceRefusalFailsWrites(t *testing.T) {
	var calls atomic.Int32
	lost := errors.New("stale epoch")
	p := newPairWith(t, volSize, Config{Fence: func(context.Context) error { calls.Add(1); return lost }})
	p.mirror.SetPeer(nil)
	for i := range 2 {
		if _, err := p.mirror.WriteAt(make([]byte, 4096), 0); !errors.Is(err, ErrFenced) || !errors.Is(err, lost) {
			t.Fatalf("write %d = %v, want ErrFenced wrapping the refusal", i, err)
		}
	}
	if calls.Load() != 1 {
		t.Fatalf("%d fence calls, want 1: a refusal is final", calls.Load())
	}
	if !p.mirror.Status().Fenced {
		t.Fatal("status does not say that writes are refused")
	}
}

func TestCloseCancelsASuspendedWrite(t *testing.T) {
	entered := make(chan struct{})
	p := newPairWith(t, volSize, Config{Fence: func(ctx context.Context) error { close(entered); <-ctx.Done(); return ctx.Err() }})
	p.mirror.SetPeer(nil)
	done := make(chan error, 1)
	go func() { _, err := p.mirror.WriteAt(make([]byte, 4096), 0); done <- err }()
	<-entered
	if err := p.mirror.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, blockdev.ErrClosed) {
		t.Fatalf("suspended write = %v, want blockdev.ErrClosed", err)
	}
}

// TestFenceOncePerLoss: a write the peer did not get, or a flush it did
// not make while it holds writes it acknowledged unflushed, is
// acknowledged only after a fence commit made in the same loss of the
// peer; a reconnect does not carry an earlier commit over to the next
// loss. Each step's expected total of commits is exact.
func TestFenceOncePerLoss(t *testing.T) {
	var log fenceLog
	p := newPairWith(t, volSize, Config{Fence: func(context.Context) error { log.add("fence"); return nil }})
	steps := []struct {
		name   string
		do     func()
		fences int
	}{
		{"flush without a peer before any write", func() { p.mirror.SetPeer(nil); must(t, p.mirror.Flush()) }, 0},
		{"connected write", func() { p.mirror.SetPeer(p.dial(t)); writeBlock(t, p.mirror, 1) }, 0},
		{"write after the peer is lost", func() { p.mirror.SetPeer(nil); writeBlock(t, p.mirror, 2) }, 1},
		{"more writes in the same loss", func() { writeBlock(t, p.mirror, 3); writeBlock(t, p.mirror, 4) }, 1},
		{"flush in the same loss", func() { must(t, p.mirror.Flush()) }, 1},
		{"write on a new session", func() { p.mirror.SetPeer(p.dial(t)); writeBlock(t, p.mirror, 5) }, 1},
		{"write after the new session is lost", func() { p.mirror.SetPeer(nil); writeBlock(t, p.mirror, 6) }, 2},
		{"flush alone after another reconnect and loss", func() {
			p.mirror.SetPeer(p.dial(t))
			p.mirror.SetPeer(nil)
			must(t, p.mirror.Flush())
		}, 3},
	}
	for _, st := range steps {
		st.do()
		if got := log.count("fence"); got != st.fences {
			t.Fatalf("%s: %d fence commits so far, want %d", st.name, got, st.fences)
		}
	}
}

// TestFenceCommittedWithLiveSessionCoversNothingLater is issue 13's
// sequence 1 in process: writes that failed while the peer was away wait
// for a fence that commits only after the session is back; the next loss
// of that session must commit again before any write is acknowledged.
// (The code before the fix kept a "fenced" flag that the reconnect cleared
// and the late commit set again for the live session.)
func TestFenceCommittedWithLiveSessionCoversNothingLater(t *testing.T) {
	var log fenceLog
	release := make(chan struct{})
	p := newPairWith(t, volSize, Config{Fence: func(ctx context.Context) error {
		log.add("fence")
		if log.count("fence") == 1 {
			<-release // no quorum until the test says so
		}
		return nil
	}})
	p.mirror.SetPeer(nil)
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for _, blk := range []int64{10, 20} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := p.mirror.WriteAt(pattern(blk), blk*4096)
			errs <- err
		}()
	}
	poll.Until(t, 5*time.Second, "the condition", func() bool {
		return p.mirror.Status().Suspended && p.dirty.OutOfSync().GetCardinality() == 2
	})
	// The session comes back while the writes wait: SetPeer must not wait
	// for the fence.
	reconnected := make(chan struct{})
	go func() { p.mirror.SetPeer(p.dial(t)); close(reconnected) }()
	select {
	case <-reconnected:
	case <-time.After(10 * time.Second):
		t.Fatal("SetPeer waited for a fence commit")
	}
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("write after the fence committed: %v", err)
		}
	}
	if n := log.count("fence"); n != 1 {
		t.Fatalf("%d fence commits for one loss, want 1", n)
	}
	writeBlock(t, p.mirror, 30) // shipped on the live session
	p.mirror.SetPeer(nil)
	writeBlock(t, p.mirror, 40)
	if n := log.count("fence"); n != 2 {
		t.Fatalf("the loss of the session that came back was acknowledged with %d fence commits in all, want 2", n)
	}
}

// TestCommitInSync: the peer is recorded in sync only with a live session
// and nothing out of sync, and a loss of the session during that commit
// is fenced after it, never before.
func TestCommitInSync(t *testing.T) {
	var log fenceLog
	p := newPairWith(t, volSize, Config{Fence: func(context.Context) error { log.add("fence"); return nil }})
	commit := func(context.Context) error { log.add("uptodate"); return nil }
	ctx := context.Background()

	p.mirror.SetPeer(nil)
	if err := p.mirror.CommitInSync(ctx, commit); !errors.Is(err, ErrPeerChanged) {
		t.Fatalf("commit without a session = %v, want ErrPeerChanged", err)
	}
	writeBlock(t, p.mirror, 7) // out of sync
	p.mirror.SetPeer(p.dial(t))
	if err := p.mirror.CommitInSync(ctx, commit); !errors.Is(err, ErrPeerChanged) {
		t.Fatalf("commit with a block out of sync = %v, want ErrPeerChanged", err)
	}
	must(t, p.mirror.Resync(ctx, false))

	inCommit, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- p.mirror.CommitInSync(ctx, func(context.Context) error {
			log.add("uptodate")
			close(inCommit)
			<-release
			log.add("uptodate applied")
			return nil
		})
	}()
	<-inCommit
	p.mirror.SetPeer(nil)
	wrote := make(chan error, 1)
	go func() { _, err := p.mirror.WriteAt(pattern(8), 8*4096); wrote <- err }()
	poll.Until(t, 5*time.Second, "the condition", func() bool { return p.dirty.OutOfSync().Contains(8) })
	close(release)
	must(t, <-done)
	must(t, <-wrote)
	if got, want := log.list(), []string{"fence", "uptodate", "uptodate applied", "fence"}; !slices.Equal(got, want) {
		t.Fatalf("commits %v, want %v", got, want)
	}
}

// TestFenceOfALossCaughtUpSince is docs/reliability.md's finding 1 in
// process: a write that failed to ship while the peer was away asks for
// the fence of that loss only after the peer came back, was resynced and
// was recorded in sync on the new session (the write's goroutine was
// descheduled between marking its blocks out of sync and asking; a
// loaded machine does that). The peer holds the write: no commit, which
// would mark it outdated and start a generation that never reaches it.
// A commit is still made for a later loss, with blocks out of sync, or
// with a session that was never recorded in sync.
func TestFenceOfALossCaughtUpSince(t *testing.T) {
	var log fenceLog
	p := newPairWith(t, volSize, Config{Fence: func(context.Context) error { log.add("fence"); return nil }})
	ctx := context.Background()
	uptodate := func(context.Context) error { log.add("uptodate"); return nil }
	// The write's effect up to its fence: on this disk, out of sync.
	failedWrite := func(blk int64) {
		if _, err := p.primary.WriteAt(pattern(blk), blk*4096); err != nil {
			t.Fatal(err)
		}
		b := roaring.New()
		b.Add(uint32(blk))
		p.dirty.MarkOutOfSync(b)
	}

	p.mirror.SetPeer(nil)
	loss := p.mirror.lossCount()
	failedWrite(10)
	p.mirror.SetPeer(p.dial(t))
	must(t, p.mirror.Resync(ctx, false))
	must(t, p.mirror.CommitInSync(ctx, uptodate))
	must(t, p.mirror.ensureFenced(loss)) // the late write
	if got, want := log.list(), []string{"uptodate"}; !slices.Equal(got, want) {
		t.Fatalf("commits %v, want %v: the peer holds the write", got, want)
	}
	if fileSum(t, p.priPath) != fileSum(t, p.secPath) {
		t.Fatal("the peer lacks the write")
	}

	// A loss after the record is fenced.
	p.mirror.SetPeer(nil)
	writeBlock(t, p.mirror, 11)
	if n := log.count("fence"); n != 1 {
		t.Fatalf("%d fence commits after a loss that followed the record, want 1", n)
	}

	// Caught up and recorded, then a block went out of sync (verify
	// found it): the late write's fence commits.
	p.mirror.SetPeer(p.dial(t))
	must(t, p.mirror.Resync(ctx, false))
	p.mirror.SetPeer(nil)
	loss = p.mirror.lossCount()
	failedWrite(12)
	p.mirror.SetPeer(p.dial(t))
	must(t, p.mirror.Resync(ctx, false))
	must(t, p.mirror.CommitInSync(ctx, uptodate))
	must(t, p.mirror.MarkOutOfSync(roaring.BitmapOf(13), "verify found it different"))
	must(t, p.mirror.ensureFenced(loss))
	if n := log.count("fence"); n != 2 {
		t.Fatalf("%d fence commits with a block out of sync, want 2", n)
	}
	must(t, p.mirror.Resync(ctx, false))

	// Back and resynced but not recorded in sync: it commits.
	p.mirror.SetPeer(nil)
	loss = p.mirror.lossCount()
	failedWrite(14)
	p.mirror.SetPeer(p.dial(t))
	must(t, p.mirror.Resync(ctx, false))
	must(t, p.mirror.ensureFenced(loss))
	if n := log.count("fence"); n != 3 {
		t.Fatalf("%d fence commits for a session not recorded in sync, want 3", n)
	}
}

// TestResyncMarksTargetBeforeFirstBlock: a resync commits "peer
// inconsistent" once, before the first block it sends; a checksum resync
// that finds nothing to send does not; if the commit fails nothing is sent.
func TestResyncMarksTargetBeforeFirstBlock(t *testing.T) {
	cases := []struct {
		name     string
		differ   bool  // the secondary's copy of the out-of-sync blocks differs
		checksum bool  // checksum resync
		refuse   error // the commit's answer
		marks    int
		wantErr  error
	}{
		{"blocks to send", true, false, nil, 1, nil},
		{"checksum resync, blocks differ", true, true, nil, 1, nil},
		{"checksum resync, nothing differs", false, true, nil, 0, nil},
		{"no quorum", true, false, errors.New("no quorum"), 1, ErrTargetNotMarked},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var marks fenceLog
			p := newPairWith(t, volSize, Config{ResyncStart: func(context.Context, bool) error { marks.add("inconsistent"); return tc.refuse }})
			for i := range 64 {
				writeBlock(t, p.mirror, int64(i))
			}
			if tc.differ {
				f, err := os.OpenFile(p.secPath, os.O_RDWR, 0)
				if err != nil {
					t.Fatal(err)
				}
				for _, b := range []int64{3, 33} {
					if _, err := f.WriteAt([]byte("stale"), b*4096); err != nil {
						t.Fatal(err)
					}
				}
				f.Close()
			}
			before, err := os.ReadFile(p.secPath)
			if err != nil {
				t.Fatal(err)
			}
			all := roaring.New()
			all.AddRange(0, 64)
			p.dirty.MarkOutOfSync(all)
			err = p.mirror.Resync(context.Background(), tc.checksum)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("resync = %v, want %v", err, tc.wantErr)
			}
			if n := marks.count("inconsistent"); n != tc.marks {
				t.Fatalf("%d inconsistent marks, want %d", n, tc.marks)
			}
			after, err := os.ReadFile(p.secPath)
			if err != nil {
				t.Fatal(err)
			}
			if tc.wantErr != nil && !bytes.Equal(before, after) {
				t.Fatal("the resync changed the secondary although the commit failed")
			}
			if tc.wantErr == nil && fileSum(t, p.priPath) != fileSum(t, p.secPath) {
				t.Fatal("files differ after the resync")
			}
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
