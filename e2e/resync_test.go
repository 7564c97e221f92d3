package e2e

import (
	"cmp"
	"crypto/rand"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/internal/peertest"
	"github.com/ldmirror/ldmirror/internal/poll"
	"github.com/ldmirror/ldmirror/mirror"
	"github.com/ldmirror/ldmirror/volume"

	"github.com/ldmirror/ldmirror/node"
)

const blockSize = 4096

// writeBlocks writes n random 4 KiB blocks at block indexes first.. through
// the primary's export file and fsyncs.
func writeBlocks(t *testing.T, a string, first, n int) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(a, volume.ExportDir, "volume"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, blockSize)
	for i := range n {
		rand.Read(buf)
		if _, err := f.WriteAt(buf, int64(first+i)*blockSize); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// waitInSync waits until the primary is connected with nothing dirty and both
// hosts hold the same generation, then checks the backing files are equal.
func waitInSync(t *testing.T, a, b string) node.Status {
	t.Helper()
	st := waitClean(t, a, b)
	if fileSHA256(t, filepath.Join(a, "volume.img")) != fileSHA256(t, filepath.Join(b, "volume.img")) {
		t.Fatal("backing files differ although status says in sync")
	}
	return st
}

// waitClean waits until status says the hosts are in sync.
func waitClean(t *testing.T, a, b string) node.Status {
	t.Helper()
	var st, sb node.Status
	deadline := time.Now().Add(60 * time.Second)
	for {
		var err, errb error
		st, err = status(a)
		sb, errb = status(b)
		if err == nil && errb == nil && st.Link == node.LinkConnected && st.DirtyBlocks == 0 &&
			st.Replication == mirror.StateReplicating && st.Generations == sb.Generations {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not in sync after 60 s:\nprimary %+v (%v)\nsecondary %+v (%v)", st, err, sb, errb)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return st
}

// crashSpan is where the crash tests write: the first two 4 MiB extents.
const crashSpan = 8 << 20

// writeStream is writers writing random blocks of one size into the first
// span bytes of a primary's export, until stopped or a write fails.
type writeStream struct {
	f       *os.File
	stopped atomic.Bool
	wg      sync.WaitGroup
	written atomic.Int64 // writes that returned without error
	errMu   sync.Mutex
	err     error // the first write error
}

func startWriteStream(t *testing.T, a string, writers int, size, span int64, rng *mrand.Rand) *writeStream {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(a, volume.ExportDir, "volume"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	s := &writeStream{f: f}
	for w := range writers {
		wr := mrand.New(mrand.NewPCG(rng.Uint64(), uint64(w)))
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			buf := make([]byte, size)
			for !s.stopped.Load() {
				rand.Read(buf)
				if _, err := f.WriteAt(buf, wr.Int64N(span/size)*size); err != nil {
					s.errMu.Lock()
					s.err = cmp.Or(s.err, err)
					s.errMu.Unlock()
					return
				}
				s.written.Add(1)
			}
		}()
	}
	return s
}

// stop ends the stream and returns its first write error.
func (s *writeStream) stop() error {
	s.stopped.Store(true)
	s.wg.Wait()
	s.f.Close()
	s.errMu.Lock()
	defer s.errMu.Unlock()
	return s.err
}

// crashWhileWriting runs eight writers of random 16 KiB blocks in the first
// crashSpan bytes, SIGKILLs the primary after a random number of writes and
// restarts it with the same arguments.
func crashWhileWriting(t *testing.T, a string, pri *daemon, rng *mrand.Rand) *daemon {
	t.Helper()
	args := pri.cmd.Args[4:] // everything after "ldmirror daemon --dir A"
	s := startWriteStream(t, a, 8, 16<<10, crashSpan, rng)
	at := 50 + rng.Int64N(500)
	poll.Until(t, 10*time.Second, "writes to flow", func() bool { return s.written.Load() >= at })
	pri.kill()
	_ = s.stop() // the writes fail once the daemon died under them
	<-pri.done
	return startDaemon(t, a, args...)
}

// TestPrimaryKilledDuringWrites is issue 4's scenario 2: the primary is
// SIGKILLed at a random point of a write stream, 20 times. Each restart
// resyncs what its scoreboard recovered (the activity log's hot extents and
// the out-of-sync map), comparing checksums first, so it sends only the
// blocks of the writes in flight at the kill; the backing files end
// identical.
func TestPrimaryKilledDuringWrites(t *testing.T) {
	requireE2E(t)
	a, b, creds := pairDirs(t, "256MiB")
	pri, _ := mirroredPair(t, a, b, creds)
	rng := mrand.New(mrand.NewPCG(3, 4))
	for kill := range 20 {
		pri = crashWhileWriting(t, a, pri, rng)
		st := waitInSync(t, a, b)
		// At most the eight 16 KiB writes in flight differ; the rest of the
		// two hot extents is skipped by checksum.
		if st.BytesShipped > 8*16<<10 || st.ResyncSkipped == 0 {
			t.Fatalf("kill %d: the restart resent %d bytes and skipped %d blocks; want at most %d bytes and the rest skipped",
				kill, st.BytesShipped, st.ResyncSkipped, 8*16<<10)
		}
	}
	log, _ := os.ReadFile(filepath.Join(a, "daemon.log"))
	if !strings.Contains(string(log), "did not stop cleanly") {
		t.Fatalf("restart did not report the unclean stop:\n%s", log)
	}
}

// TestSecondaryKilledResyncsOnlyDirtyBlocks is issue 4's scenario 1: the
// secondary is SIGKILLed during a write stream, 50 MiB more are written,
// and after its restart only the dirty blocks travel, not the volume.
func TestSecondaryKilledResyncsOnlyDirtyBlocks(t *testing.T) {
	requireE2E(t)
	const (
		volume = 256 << 20
		span   = 64 << 20 // where the stream writes
		more   = 50 << 20 // written at 128 MiB after the stream
		extent = 4 << 20  // activity-log extent
		// Neither side adds activity-log extents to this resync: the
		// primary did not crash and the secondary never was primary.
		hot = 0
	)
	a, b, creds := pairDirs(t, "256MiB")
	_, sec := mirroredPair(t, a, b, creds)
	args := sec.cmd.Args[4:]

	s := startWriteStream(t, a, 4, blockSize, span, mrand.New(mrand.NewPCG(7, 8)))
	poll.Until(t, 10*time.Second, "the stream to flow", func() bool { return s.written.Load() >= 200 })
	// Writes that returned before the kill were acknowledged by the
	// secondary; only those after it may be dirty.
	atKill := s.written.Load()
	sec.kill()
	<-sec.done
	poll.Until(t, 10*time.Second, "the primary to notice", func() bool {
		st, err := status(a)
		return err == nil && st.Link == node.LinkDisconnected
	})
	poll.Until(t, 10*time.Second, "the stream to go on in logging mode", func() bool { return s.written.Load() >= atKill+500 })
	if err := s.stop(); err != nil {
		t.Fatalf("a write failed while the secondary was down: %v", err)
	}
	streamed := s.written.Load() - atKill
	writeRange(t, a, 128<<20, more)

	st := statusJSON(t, a)
	dirty := int64(st.DirtyBlocks)
	if st.Replication != mirror.StateLogging || dirty < more/blockSize || dirty > more/blockSize+streamed {
		t.Fatalf("before the restart: replication %s, %d dirty blocks; want logging and %d to %d (50 MiB plus the %d stream writes since the kill)",
			st.Replication, dirty, more/blockSize, more/blockSize+streamed, streamed)
	}

	startDaemon(t, b, args...)
	after := waitInSync(t, a, b)
	resent := int64(after.BytesShipped - st.BytesShipped)
	limit := dirty*blockSize*11/10 + hot*extent
	if resent > limit {
		t.Fatalf("resent %d bytes for %d dirty blocks; want at most %d (1.1 x dirty x %d B)", resent, dirty, limit, blockSize)
	}
	t.Logf("%d stream writes since the kill, %d dirty blocks (%.1f MiB); resent %.1f MiB in %d resync blocks, %.1f%% of the %d MiB volume",
		streamed, dirty, float64(dirty*blockSize)/(1<<20), float64(resent)/(1<<20), after.ResyncSent-st.ResyncSent, 100*float64(resent)/volume, volume>>20)
}

// TestPeerWithNewerOrDivergedDataIsRefused: generation identifiers keep a
// primary from overwriting a peer that wrote on its own; a split brain is
// refused until `ldmirror resolve --discard-local` on one side, after which
// that side is resynced in full (issue 4, scenario 5).
func TestPeerWithNewerOrDivergedDataIsRefused(t *testing.T) {
	requireE2E(t)
	a, b, creds := pairDirs(t, "16MiB")
	addr := peertest.FreeAddr(t)

	// b runs alone as primary and writes: its data is now newer than a's.
	alone := startDaemon(t, b, "--role", "primary", "--node-id", "b")
	writeBlocks(t, b, 0, 10)
	alone.stop(t)
	bSum := fileSHA256(t, filepath.Join(b, "volume.img"))

	sec := startDaemon(t, b, "--role", "secondary", "--node-id", "b", "--listen", addr, "--tls-dir", creds)
	pri := startDaemon(t, a, "--role", "primary", "--node-id", "a", "--peer", addr, "--tls-dir", creds)
	poll.Until(t, 15*time.Second, "a to refuse b", func() bool {
		st, err := status(a)
		return err == nil && strings.Contains(st.LastError, "peer is the resync source")
	})
	// a wrote too: now both diverged.
	writeBlocks(t, a, 100, 10)
	pri.stop(t)
	startDaemon(t, a, "--role", "primary", "--node-id", "a", "--peer", addr, "--tls-dir", creds)
	// Both hosts say so, with the remedy: an operator may look at either.
	for _, dir := range []string{a, b} {
		poll.Until(t, 15*time.Second, dir+" to report split brain and its remedy", func() bool {
			st, err := status(dir)
			return err == nil && strings.Contains(st.LastError, "both wrote since they last agreed") &&
				strings.Contains(st.LastError, "`ldmirror resolve --dir DIR --discard-local`") && st.Link != node.LinkConnected
		})
	}
	if fileSHA256(t, filepath.Join(b, "volume.img")) != bSum {
		t.Fatal("the refused peer's data changed")
	}
	if out, err := exec.Command(binary, "resolve", "--dir", b).CombinedOutput(); err == nil || !strings.Contains(string(out), "--discard-local") {
		t.Fatalf("resolve without --discard-local: %v\n%s", err, out)
	}

	// Resolve: b gives up its changes.
	sec.stop(t)
	ldmirror(t, "resolve", "--dir", b, "--discard-local")
	startDaemon(t, b, "--role", "secondary", "--node-id", "b", "--listen", addr, "--tls-dir", creds)
	st := waitInSync(t, a, b)
	if sb := statusJSON(t, b); sb.Disk != cluster.DiskUpToDate || sb.LastError != "" {
		t.Fatalf("b after the full resync: disk %s, last error %q; want uptodate and none", sb.Disk, sb.LastError)
	}
	if st.BytesShipped < 16<<20 {
		t.Fatalf("shipped %d bytes, want the whole 16 MiB volume", st.BytesShipped)
	}
	if fileSHA256(t, filepath.Join(b, "volume.img")) == bSum {
		t.Fatal("b still holds its discarded data")
	}
}

// TestVerifyRepairsFlippedBits is issue 4's scenario 7: bits flipped in one
// block of the secondary's backing file; `ldmirror verify` finds exactly that
// block and resyncs it.
func TestVerifyRepairsFlippedBits(t *testing.T) {
	requireE2E(t)
	a, b, creds := pairDirs(t, "64MiB")
	mirroredPair(t, a, b, creds)
	writeBlocks(t, a, 0, 256)
	waitInSync(t, a, b)
	const bad = 77
	f, err := os.OpenFile(filepath.Join(b, "volume.img"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{0xFF, 0x00, 0xFF}, bad*blockSize+1000); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out := ldmirror(t, "verify", "--dir", a)
	want := fmt.Sprintf("checked %d blocks", 64<<20/blockSize)
	if !strings.Contains(out, want) || !strings.Contains(out, fmt.Sprintf(": 1 out of sync (blocks [%d])", bad)) || !strings.Contains(out, "resynced") {
		t.Fatalf("verify printed %q; want %q, exactly block %d and a resync", out, want, bad)
	}
	waitInSync(t, a, b)
	if out := ldmirror(t, "verify", "--dir", a); !strings.Contains(out, ": 0 out of sync") {
		t.Fatalf("second verify: %q", out)
	}
	if _, err := exec.Command(binary, "verify", "--dir", b).CombinedOutput(); err == nil {
		t.Fatal("verify on the secondary succeeded; only the primary can verify")
	}
}

// writeRange fills n bytes at off of the primary's export with random data.
func writeRange(t *testing.T, a string, off, n int64) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(a, volume.ExportDir, "volume"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for done := int64(0); done < n; done += int64(len(buf)) {
		rand.Read(buf)
		if _, err := f.WriteAt(buf[:min(int64(len(buf)), n-done)], off+done); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// TestResyncInterruptedAndResumed is issue 4's scenario 6: the resync
// source is SIGKILLed past half way; after its restart the resync resumes
// from the progress it persisted (once a second) instead of starting over.
// The dirty data is written before a clean restart of the primary: after a
// crash the primary also resyncs its activity log's hot extents, which would
// hide whether the progress survived.
func TestResyncInterruptedAndResumed(t *testing.T) {
	requireE2E(t)
	const rate = 16 << 20 // bytes per second
	const dirty = 96 << 20
	a, b, creds := pairDirs(t, "256MiB")
	pri, sec := mirroredPair(t, a, b, creds, "--resync-rate", "16MiB")
	priArgs, secArgs := pri.cmd.Args[4:], sec.cmd.Args[4:]
	sec.kill()
	<-sec.done
	poll.Until(t, 10*time.Second, "the primary to notice", func() bool {
		st, err := status(a)
		return err == nil && st.Link == node.LinkDisconnected
	})
	writeRange(t, a, 32<<20, dirty)
	pri.stop(t)
	pri = startDaemon(t, a, priArgs...)
	if st := statusJSON(t, a); st.DirtyBlocks != dirty/blockSize {
		t.Fatalf("after a clean restart %d blocks are dirty, want %d", st.DirtyBlocks, dirty/blockSize)
	}

	startDaemon(t, b, secArgs...)
	var doneAtKill uint64
	poll.Until(t, 30*time.Second, "the resync to pass 60%", func() bool {
		st, err := status(a)
		doneAtKill = st.ResyncDone
		return err == nil && st.Replication == mirror.StateResyncing && st.ResyncDone*10 >= st.ResyncTotal*6
	})
	pri.kill()
	<-pri.done
	startDaemon(t, a, priArgs...)
	st := waitInSync(t, a, b)
	resent := int64(st.BytesShipped)
	limit := dirty - int64(doneAtKill)*blockSize + 3*rate/2 // what was left, plus at most ~1 s of unpersisted progress
	if resent > limit || resent >= dirty {
		t.Fatalf("after the restart the resync sent %d bytes; %d of %d were done at the kill, so at most %d were due", resent, doneAtKill*blockSize, dirty, limit)
	}
	t.Logf("killed at %d%% of %d MiB; the restarted source resent %.1f MiB", 100*doneAtKill*blockSize/dirty, dirty>>20, float64(resent)/(1<<20))
}

// TestOperatorResync: `ldmirror resync --full` copies every block;
// with --checksum, identical blocks are compared and not sent.
func TestOperatorResync(t *testing.T) {
	requireE2E(t)
	a, b, creds := pairDirs(t, "16MiB")
	mirroredPair(t, a, b, creds)
	writeBlocks(t, a, 0, 100)
	before := waitInSync(t, a, b)
	const blocks = 16 << 20 / blockSize
	out := ldmirror(t, "resync", "--dir", a, "--full", "--checksum")
	if want := fmt.Sprintf("resynced %d blocks", blocks); !strings.Contains(out, want) || !strings.Contains(out, fmt.Sprintf("%d of them equal and not sent", blocks)) {
		t.Fatalf("resync --full --checksum printed %q", out)
	}
	if st := waitInSync(t, a, b); st.BytesShipped != before.BytesShipped {
		t.Fatalf("a checksum resync of identical volumes sent %d bytes", st.BytesShipped-before.BytesShipped)
	}
	ldmirror(t, "resync", "--dir", a, "--full")
	if st := waitInSync(t, a, b); st.BytesShipped-before.BytesShipped != 16<<20 {
		t.Fatalf("resync --full sent %d bytes, want the 16 MiB volume", st.BytesShipped-before.BytesShipped)
	}
	if out, err := exec.Command(binary, "resync", "--dir", b).CombinedOutput(); err == nil || !strings.Contains(string(out), "only the primary") {
		t.Fatalf("resync on the secondary: %v %s", err, out)
	}
}
