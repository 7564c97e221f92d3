package e2e

import (
	"bytes"
	be "encoding/binary"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/internal/peertest"
	"github.com/ldmirror/ldmirror/internal/poll"
	"github.com/ldmirror/ldmirror/mirror"

	"github.com/ldmirror/ldmirror/node"
)

// TestAsyncDaemonJournalCatchUp runs the daemons in async mode: a short
// disconnect of the secondary is caught up by replaying the journal; a
// long one overflows the 1 MiB journal, which status reports, and the
// reconnect falls back to a bitmap resync. Both end byte-identical.
// (Write-order fidelity during the replay is checked in-process by
// blockdev's TestAsyncCatchUpKeepsWriteOrder, which can snapshot the
// secondary between two applied writes.)
func TestAsyncDaemonJournalCatchUp(t *testing.T) {
	requireE2E(t)
	a, b, creds := pairDirs(t, "64MiB")
	priArgs, secArgs := pairArgs(t, "--mode", "async", "--journal-size", "1MiB", "--tls-dir", creds, "--timeout", "1s")
	_, sec := startPair(t, a, b, priArgs, secArgs)
	writeBlocks(t, a, 0, 32)
	if st := waitInSync(t, a, b); st.Mode != "async" || st.JournalCapacity != 1<<20 {
		t.Fatalf("status mode %q, journal capacity %d; want async, 1 MiB", st.Mode, st.JournalCapacity)
	}

	// Short disconnect: 64 KiB written while b is down fit the journal.
	sec.kill()
	<-sec.done
	writeBlocks(t, a, 100, 16)
	sec = startDaemon(t, b, secArgs...)
	st := waitInSync(t, a, b)
	if st.LastCatchUp != "journal" {
		t.Fatalf("after a short disconnect the catch-up was %q (%s); want journal", st.LastCatchUp, st.FallbackReason)
	}

	// Long disconnect: 4 MiB do not fit the 1 MiB journal.
	sec.kill()
	<-sec.done
	writeBlocks(t, a, 1000, 1024)
	poll.Until(t, 10*time.Second, "status to report the journal overflow", func() bool {
		st, err := status(a)
		return err == nil && st.JournalOverflow && st.FallbackReason != "" && st.Replication == mirror.StateLogging
	})
	t.Logf("overflow reported: %s", statusJSON(t, a).FallbackReason)
	startDaemon(t, b, secArgs...)
	st = waitInSync(t, a, b)
	if st.LastCatchUp != "bitmap" {
		t.Fatalf("after the journal overflowed the catch-up was %q; want bitmap", st.LastCatchUp)
	}
}

// fileWriter writes files into a mounted file system, each made durable
// with fsync of the file and of its directory, and deletes some of them;
// it remembers which creations and deletions completed (were acknowledged).
type fileWriter struct {
	dir     string
	stopped atomic.Bool
	done    chan struct{}

	mu      sync.Mutex
	acked   map[int]bool // file number: true once durable, false once its deletion was durable
	pending int          // the file being created or deleted when the writer stopped; -1: none
	bytes   int64        // bytes of the files acknowledged
	err     error        // why the writer stopped, if not asked to
}

// fileContent is file k's content: 16 to 272 KiB that name k.
func fileContent(k int) []byte {
	rng := mrand.New(mrand.NewPCG(uint64(k), 21))
	b := make([]byte, 16<<10+rng.IntN(256<<10))
	for i := 0; i+8 <= len(b); i += 8 {
		be.BigEndian.PutUint64(b[i:], rng.Uint64())
	}
	copy(b, fmt.Sprintf("file %d", k))
	return b
}

func fileName(k int) string { return fmt.Sprintf("f%06d", k) }

func startFileWriter(dir string) *fileWriter {
	w := &fileWriter{dir: dir, done: make(chan struct{}), acked: map[int]bool{}, pending: -1}
	go func() {
		defer close(w.done)
		d, err := os.Open(dir)
		if err != nil {
			w.stop(err)
			return
		}
		defer d.Close()
		for k := 0; !w.stopped.Load(); k++ {
			// Every fifth step deletes the file created seven steps before.
			del, victim := k%5 == 4 && k >= 7, k-7
			w.mu.Lock()
			w.pending = k
			if del {
				w.pending = victim
			}
			w.mu.Unlock()
			var err error
			var data []byte
			if del {
				err = os.Remove(filepath.Join(dir, fileName(victim)))
			} else {
				data = fileContent(k)
				err = writeDurably(filepath.Join(dir, fileName(k)), data)
			}
			if err == nil {
				err = d.Sync()
			}
			if err != nil {
				w.stop(err)
				return
			}
			w.mu.Lock()
			w.pending = -1
			if del {
				w.acked[victim] = false
			} else {
				w.acked[k] = true
				w.bytes += int64(len(data))
			}
			w.mu.Unlock()
		}
	}()
	return w
}

func writeDurably(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// stop ends the writer: with err, because a write failed.
func (w *fileWriter) stop(err error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.mu.Unlock()
	w.stopped.Store(true)
}

func (w *fileWriter) ackedBytes() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.bytes
}

// check verifies the file system mounted at mnt: every acknowledged file
// holds its content, every acknowledged deletion is gone. The file being
// created or deleted when the writer stopped may be in either state.
func (w *fileWriter) check(t *testing.T, mnt string) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	files := 0
	for k, present := range w.acked {
		if k == w.pending {
			continue
		}
		got, err := os.ReadFile(filepath.Join(mnt, fileName(k)))
		switch {
		case !present && !errors.Is(err, os.ErrNotExist):
			t.Errorf("%s: the deletion of %s was acknowledged, but it is there (%v)", mnt, fileName(k), err)
		case present && err != nil:
			t.Errorf("%s: acknowledged file %s: %v", mnt, fileName(k), err)
		case present && !bytes.Equal(got, fileContent(k)):
			t.Errorf("%s: acknowledged file %s holds %d bytes that differ from the %d written", mnt, fileName(k), len(got), len(fileContent(k)))
		}
		if present {
			files++
		}
	}
	t.Logf("%s: %d acknowledged files intact, %d deletions done", mnt, files, len(w.acked)-files)
}

// checkSnapshot checks a file system mounted at mnt that holds the volume
// as of some earlier moment (a crash-consistent copy): every file of the
// writer in it holds its content, or a beginning of it (a file whose fsync
// had not returned yet). With ext4's ordered data, the data of a file is
// written before the metadata that makes it visible, so a state with the
// metadata but not the data, as a copy in block order makes, fails here.
func (w *fileWriter) checkSnapshot(t *testing.T, mnt string) {
	t.Helper()
	entries, err := os.ReadDir(mnt)
	if err != nil {
		t.Fatal(err)
	}
	files := 0
	for _, e := range entries {
		var k int
		if _, err := fmt.Sscanf(e.Name(), "f%06d", &k); err != nil || e.Name() != fileName(k) {
			continue
		}
		got, err := os.ReadFile(filepath.Join(mnt, e.Name()))
		if err != nil {
			t.Errorf("%s: %s: %v", mnt, e.Name(), err)
			continue
		}
		if want := fileContent(k); len(got) > len(want) || !bytes.Equal(got, want[:len(got)]) {
			t.Errorf("%s: %s holds %d bytes that are not the beginning of its %d bytes", mnt, e.Name(), len(got), len(want))
		}
		files++
	}
	t.Logf("%s: %d files, each holding its content or a beginning of it", mnt, files)
}

// copyImage copies a backing file (sparse) to a new file in dir.
func copyImage(t *testing.T, src, dir, name string) string {
	t.Helper()
	dst := filepath.Join(dir, name)
	run(t, "cp", "--sparse=always", src, dst)
	return dst
}

// mountImage attaches an image copy to a loop device and mounts it
// read-write, which replays its ext4 journal as a crash recovery would; the
// returned func unmounts and detaches it.
func mountImage(t *testing.T, img string) (mnt string, unmount func()) {
	t.Helper()
	dev := strings.TrimSpace(run(t, "losetup", "--find", "--show", img))
	mnt = t.TempDir()
	if out, err := exec.Command("mount", "-t", "ext4", dev, mnt).CombinedOutput(); err != nil {
		exec.Command("losetup", "-d", dev).Run()
		t.Fatalf("mount %s (a copy of the secondary): %v %s", img, err, out)
	}
	return mnt, func() {
		t.Helper()
		run(t, "umount", mnt)
		run(t, "losetup", "-d", dev)
	}
}

// checkExt4 checks an image copy the way a failover would use it: mounted
// (journal replayed) and unmounted, then e2fsck must find nothing to fix.
func checkExt4(t *testing.T, img string) {
	t.Helper()
	_, unmount := mountImage(t, img)
	unmount()
	if out, err := exec.Command("e2fsck", "-f", "-n", img).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn %s after journal replay: %v\n%s", img, err, out)
	}
}

// sameBytes fails unless the two files hold the same bytes; it names the
// first offset where they differ.
func sameBytes(t *testing.T, p, q string) {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	g, err := os.Open(q)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	bf, bg := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); ; off += int64(len(bf)) {
		n, errf := io.ReadFull(f, bf)
		m, errg := io.ReadFull(g, bg)
		if n != m || !bytes.Equal(bf[:n], bg[:m]) {
			i := 0
			for i < min(n, m) && bf[i] == bg[i] {
				i++
			}
			t.Fatalf("%s and %s differ at byte %d", p, q, off+int64(i))
		}
		if errf == io.EOF || errf == io.ErrUnexpectedEOF {
			if errg != errf {
				t.Fatalf("%s and %s differ in length", p, q)
			}
			return
		}
		if errf != nil || errg != nil {
			t.Fatal(errors.Join(errf, errg))
		}
	}
}

func signal(t *testing.T, d *daemon, sig syscall.Signal) {
	t.Helper()
	if err := d.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

// TestAsyncPrimaryKilledCatchesUpFromJournal is issue 21's item 3: an
// async primary killed with -9 while its peer lags by tens of MiB resumes
// its journal after the restart, and the catch-up replays it, in write
// order, instead of a bitmap resync. The peer is consistent at every
// moment: copies of its backing file taken while the catch-up runs (the
// secondary frozen with SIGSTOP, so a copy holds whole records) mount,
// replay their ext4 journal and pass e2fsck. At the end both backing files
// are byte-identical and hold every file whose fsync returned before the
// kill.
func TestAsyncPrimaryKilledCatchesUpFromJournal(t *testing.T) {
	requireE2E(t, "mkfs.ext4", "e2fsck", "mount", "losetup")
	a, b, creds := pairDirs(t, "256MiB")
	// A long timeout: a frozen secondary keeps its session.
	priArgs, secArgs := pairArgs(t, "--mode", "async", "--journal-size", "96MiB", "--tls-dir", creds, "--timeout", "20s")
	pri, sec := startPair(t, a, b, priArgs, secArgs)
	dev, mnt := mountVolume(t, a)
	w := startFileWriter(mnt)
	poll.Until(t, 30*time.Second, "4 MiB of files written while connected", func() bool { return w.ackedBytes() >= 4<<20 || w.stopped.Load() })

	// The secondary goes away; the journal holds what it misses.
	sec.stop(t)
	const lag = 48 << 20
	poll.Until(t, 120*time.Second, "the journal to hold 48 MiB the secondary lacks", func() bool {
		st, err := status(a)
		return w.stopped.Load() || err == nil && st.JournalUsed >= lag
	})
	if w.stopped.Load() {
		t.Fatalf("the writer stopped: %v", w.err)
	}
	before := statusJSON(t, a)
	pri.kill()
	<-pri.done
	<-w.done // its writes fail once the daemon died under them
	t.Logf("primary killed with %d MiB journaled and %d records of lag; the writer stopped with: %v",
		before.JournalUsed>>20, before.JournalLag, w.err)
	exec.Command("umount", "-l", mnt).Run()
	exec.Command("losetup", "-d", dev).Run()

	startDaemon(t, a, priArgs...)
	restarted := statusJSON(t, a)
	sec = startDaemon(t, b, secArgs...)
	poll.Until(t, 60*time.Second, "the restarted primary to decide how to catch up", func() bool {
		st, err := status(a)
		return err == nil && st.LastCatchUp != ""
	})
	if st := statusJSON(t, a); st.LastCatchUp != "journal" {
		t.Fatalf("the restarted primary caught up by %s (%s); want its journal", st.LastCatchUp, st.FallbackReason)
	}
	if restarted.JournalNewest < before.JournalNewest || restarted.JournalUsed < before.JournalUsed || logLines(t, a, "journal resumed") != 1 {
		t.Fatalf("the restarted primary's journal holds %d bytes up to seq %d; want at least the %d bytes up to seq %d before the kill, resumed",
			restarted.JournalUsed, restarted.JournalNewest, before.JournalUsed, before.JournalNewest)
	}

	// Snapshots of the secondary while the catch-up runs, at about a
	// quarter, a half and three quarters of it.
	snaps := t.TempDir()
	var taken []string
	st := statusJSON(t, a)
	from, to := st.CatchUpFrom, st.CatchUpTo
	for i := 1; i <= 3 && st.CatchUpTo != 0; i++ {
		target := from + (to-from)*uint64(i)/4
		poll.Until(t, 60*time.Second, fmt.Sprintf("the secondary to apply up to seq %d", target), func() bool {
			s, err := status(a)
			return err == nil && (s.PeerDurableSeq >= target || s.CatchUpTo == 0)
		})
		signal(t, sec, syscall.SIGSTOP)
		st = statusJSON(t, a)
		if st.CatchUpTo != 0 {
			taken = append(taken, copyImage(t, filepath.Join(b, "volume.img"), snaps, fmt.Sprintf("snap%d.img", i)))
			t.Logf("snapshot %d: the secondary durable at seq %d of %d..%d", i, st.PeerDurableSeq, from, to)
		}
		signal(t, sec, syscall.SIGCONT)
	}
	if len(taken) < 2 {
		t.Fatalf("only %d snapshots taken while the catch-up ran (seq %d..%d): too fast to test", len(taken), from, to)
	}
	st = waitInSync(t, a, b)
	if st.LastCatchUp != "journal" {
		t.Fatalf("after the catch-up: last catch-up %q (%s); want journal", st.LastCatchUp, st.FallbackReason)
	}
	if n := logLines(t, a, "catching up by bitmap resync"); n > 0 {
		t.Fatalf("the restarted primary logged %d bitmap resyncs", n)
	}
	sameBytes(t, filepath.Join(a, "volume.img"), filepath.Join(b, "volume.img"))
	for _, img := range taken {
		fs, unmount := mountImage(t, img)
		w.checkSnapshot(t, fs)
		unmount()
		checkExt4(t, img)
	}
	final := copyImage(t, filepath.Join(b, "volume.img"), snaps, "final.img")
	fs, unmount := mountImage(t, final)
	w.check(t, fs)
	unmount()
	checkExt4(t, final)
	t.Logf("%d snapshots during the catch-up of seq %d..%d, each a consistent ext4", len(taken), from, to)
}

// TestAsyncPrimaryKilledAfterOverflow: an async primary whose journal
// overflowed while the peer was away, then killed with -9, cannot resume
// that journal (writes went unjournaled): the restart starts a new one,
// says why in its log and status, and the reconnect resyncs the bitmap.
func TestAsyncPrimaryKilledAfterOverflow(t *testing.T) {
	requireE2E(t)
	a, b, creds := pairDirs(t, "64MiB")
	priArgs, secArgs := pairArgs(t, "--mode", "async", "--journal-size", "1MiB", "--tls-dir", creds, "--timeout", "1s")
	pri, sec := startPair(t, a, b, priArgs, secArgs)
	writeBlocks(t, a, 0, 32)
	waitInSync(t, a, b)
	sec.stop(t)
	writeBlocks(t, a, 1000, 1024) // 4 MiB: more than the 1 MiB journal
	if st := statusJSON(t, a); !st.JournalOverflow {
		t.Fatalf("4 MiB written into a 1 MiB journal and no overflow: %+v", st)
	}
	pri.kill()
	<-pri.done

	startDaemon(t, a, priArgs...)
	st := statusJSON(t, a)
	if !strings.Contains(st.FallbackReason, "overflowed") {
		t.Fatalf("the restarted primary's fallback reason is %q; want it to say the journal overflowed", st.FallbackReason)
	}
	if logLines(t, a, "overflowed") == 0 {
		t.Fatal("the restarted primary's log does not say its journal overflowed")
	}
	startDaemon(t, b, secArgs...)
	st = waitInSync(t, a, b)
	if st.LastCatchUp != "bitmap" || !strings.Contains(st.FallbackReason, "overflowed") {
		t.Fatalf("after the reconnect: last catch-up %q (%s); want bitmap, because the journal overflowed", st.LastCatchUp, st.FallbackReason)
	}
	sameBytes(t, filepath.Join(a, "volume.img"), filepath.Join(b, "volume.img"))
	t.Logf("restart after an overflow: %s", st.FallbackReason)
}

// pairArgs returns the flags of a primary a and a secondary b on a free
// port, each with both appended.
func pairArgs(t *testing.T, both ...string) (pri, sec []string) {
	addr := peertest.FreeAddr(t)
	sec = append([]string{"--role", "secondary", "--node-id", "b", "--listen", addr}, both...)
	pri = append([]string{"--role", "primary", "--node-id", "a", "--peer", addr}, both...)
	return pri, sec
}

// startPair starts the secondary in b and the primary in a with those
// flags and waits until the primary connected.
func startPair(t *testing.T, a, b string, priArgs, secArgs []string) (pri, sec *daemon) {
	t.Helper()
	sec = startDaemon(t, b, secArgs...)
	pri = startDaemon(t, a, priArgs...)
	poll.Until(t, 10*time.Second, "the primary to connect", func() bool {
		st, err := status(a)
		return err == nil && st.Link == node.LinkConnected
	})
	return pri, sec
}
