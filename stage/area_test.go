package stage

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/blockdev"
	"golang.org/x/sys/unix"
)

// quiet is the tests' logger.
var quiet = slog.New(slog.DiscardHandler)

const (
	testBS   = 4096
	testSize = 256 * testBS
)

// fixture is a volume with random data, a model of what it must read
// back, and its staging area.
type fixture struct {
	t     *testing.T
	dir   string
	base  *blockdev.FileDevice
	orig  []byte // the volume before anything was staged
	model []byte
	area  *Area
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "volume.img")
	if err := blockdev.CreateFile(path, testSize, true); err != nil {
		t.Fatal(err)
	}
	base, err := blockdev.OpenFile(path, testSize)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { base.Close() })
	orig := make([]byte, testSize)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range orig {
		orig[i] = byte(rng.Uint32())
	}
	if _, err := base.WriteAt(orig, 0); err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, dir: dir, base: base, orig: orig, model: bytes.Clone(orig)}
	f.open()
	t.Cleanup(func() { f.area.Close() })
	return f
}

func (f *fixture) logPath() string { return filepath.Join(f.dir, "resync.stage") }

func (f *fixture) open() {
	f.t.Helper()
	a, err := Open(f.logPath(), f.base, Geometry{Size: testSize, BlockSize: testBS}, quiet)
	if err != nil {
		f.t.Fatal(err)
	}
	f.area = a
}

// reopen closes the area as a crash would leave it and opens it again.
func (f *fixture) reopen() {
	f.t.Helper()
	if err := f.area.Close(); err != nil {
		f.t.Fatal(err)
	}
	f.open()
}

func (f *fixture) begin() {
	f.t.Helper()
	if _, err := f.area.Begin(64*testBS, Begin{AsOf: time.Unix(1700000000, 0), Source: "a"}); err != nil {
		f.t.Fatal(err)
	}
}

func (f *fixture) write(off int64, n int, seed uint64) {
	f.t.Helper()
	p := make([]byte, n)
	rng := rand.New(rand.NewPCG(seed, 9))
	for i := range p {
		p[i] = byte(rng.Uint32())
	}
	if _, err := f.area.WriteAt(p, off); err != nil {
		f.t.Fatal(err)
	}
	copy(f.model[off:], p)
}

func (f *fixture) trim(off, n int64) {
	f.t.Helper()
	if err := f.area.Trim(off, n); err != nil {
		f.t.Fatal(err)
	}
	clear(f.model[off : off+n])
}

// workload writes whole runs, partial blocks across a boundary, rewrites
// of staged blocks and trims.
func (f *fixture) workload(seed uint64) {
	f.write(10*testBS, 16*testBS, seed)        // a run
	f.write(12*testBS+100, 3*testBS, seed+1)   // partial, over staged blocks
	f.write(40*testBS+7, 10, seed+2)           // inside one unstaged block
	f.write(41*testBS-5, 10, seed+3)           // across two blocks, one staged
	f.trim(60*testBS, 8*testBS)                // whole blocks
	f.trim(70*testBS+11, 2*testBS)             // partial ends
	f.write(62*testBS+1, 2*testBS, seed+4)     // over zeros
	f.write(200*testBS, testBS, seed+5)        // a single block
	f.write(int64(testSize-testBS), testBS, 7) // the last block
}

// readAll reads the whole volume through the area.
func (f *fixture) readAll() []byte {
	f.t.Helper()
	got := make([]byte, testSize)
	if _, err := f.area.ReadAt(got, 0); err != nil {
		f.t.Fatal(err)
	}
	return got
}

func (f *fixture) baseBytes() []byte {
	f.t.Helper()
	got := make([]byte, testSize)
	if _, err := f.base.ReadAt(got, 0); err != nil {
		f.t.Fatal(err)
	}
	return got
}

func (f *fixture) equal(what string, got, want []byte) {
	f.t.Helper()
	if bytes.Equal(got, want) {
		return
	}
	for b := 0; b < testSize; b += testBS {
		if !bytes.Equal(got[b:b+testBS], want[b:b+testBS]) {
			f.t.Fatalf("%s: block %d differs (first of those that do)", what, b/testBS)
		}
	}
}

func (f *fixture) waitApplied() {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := f.area.WaitApplied(ctx); err != nil {
		f.t.Fatal(err)
	}
}

// TestStagedWritesLeaveTheVolume: while staged, reads see every write and
// the volume keeps its data; the commit applies them and removes the log.
func TestStagedWritesLeaveTheVolume(t *testing.T) {
	f := newFixture(t)
	f.begin()
	f.workload(100)
	f.equal("read through the area", f.readAll(), f.model)
	f.equal("the volume while staged", f.baseBytes(), f.orig)
	in := f.area.Info()
	if in.State != Staging || in.Blocks == 0 || !in.AsOf.Equal(time.Unix(1700000000, 0)) || in.Source != "a" {
		t.Fatalf("info while staged: %+v", in)
	}
	if err := f.area.Commit(); err != nil {
		t.Fatal(err)
	}
	// Committed durably when Commit returns: the source counts the
	// resync as complete then.
	if st := f.area.Info().State; st != Applying && st != Idle {
		t.Fatalf("state when Commit returned: %v; want applying or idle", st)
	}
	f.waitApplied()
	f.equal("the volume once applied", f.baseBytes(), f.model)
	f.equal("read once applied", f.readAll(), f.model)
	if _, err := os.Stat(f.logPath()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the log is still there after the apply: %v", err)
	}
	if in := f.area.Info(); in.State != Idle {
		t.Fatalf("state after the apply: %v", in.State)
	}
	f.write(5*testBS, testBS, 1) // idle: straight to the volume
	f.equal("the volume after a later write", f.baseBytes(), f.model)
}

// TestRestartKeepsStaged: a staged log survives a restart and can still
// be discarded, which leaves the volume as it was.
func TestRestartKeepsStaged(t *testing.T) {
	f := newFixture(t)
	f.begin()
	f.workload(200)
	blocks := f.area.Info().Blocks
	f.reopen()
	if in := f.area.Info(); in.State != Staging || in.Blocks != blocks {
		t.Fatalf("after the restart: %+v, want staging with %d blocks", in, blocks)
	}
	f.equal("read after the restart", f.readAll(), f.model)
	f.begin() // a resumed resync goes on with what was staged
	f.write(100*testBS, 2*testBS, 300)
	f.equal("read after more writes", f.readAll(), f.model)
	in, staged, err := f.area.Discard()
	if err != nil {
		t.Fatal(err)
	}
	if staged.GetCardinality() != in.Blocks || !staged.Contains(100) || !staged.Contains(10) {
		t.Fatalf("discard returned %d staged blocks (%v), info says %d", staged.GetCardinality(), staged, in.Blocks)
	}
	f.equal("the volume after the discard", f.baseBytes(), f.orig)
	f.equal("read after the discard", f.readAll(), f.orig)
	if _, err := os.Stat(f.logPath()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the log is still there after the discard: %v", err)
	}
}

// TestRestartReplaysCommitted: a log committed but not applied (or half
// applied, or applied over by later writes) is applied again at Open, and
// the writes made after the commit survive the replay.
func TestRestartReplaysCommitted(t *testing.T) {
	f := newFixture(t)
	f.begin()
	f.workload(400)
	f.area.mu.Lock()
	f.area.state = Committing
	f.area.mu.Unlock()
	if !f.area.commit() { // the header is committed; no apply runs
		t.Fatal("commit failed")
	}
	if in := f.area.Info(); in.State != Applying {
		t.Fatalf("state after the commit: %v", in.State)
	}
	// Writes after the commit: over staged blocks, unstaged ones, zeros.
	f.write(11*testBS, 2*testBS, 500)
	f.write(150*testBS, testBS, 501)
	f.write(61*testBS+3, 20, 502)
	f.trim(14*testBS, testBS)
	f.equal("read while committed", f.readAll(), f.model)
	// A crash mid-apply leaves any mix in the staged blocks.
	junk := bytes.Repeat([]byte{0xee}, 21*testBS) // blocks 5 to 25
	if _, err := f.base.WriteAt(junk, 5*testBS); err != nil {
		t.Fatal(err)
	}
	copy(f.model[5*testBS:10*testBS], junk) // of which 5 to 9 were never staged
	f.reopen()
	f.waitApplied()
	f.equal("the volume after the replay", f.baseBytes(), f.model)
}

// TestWritesDuringApply: writes racing the apply land in the volume.
func TestWritesDuringApply(t *testing.T) {
	f := newFixture(t)
	f.begin()
	for i := range 64 {
		f.write(int64(i*3)*testBS, testBS, uint64(i))
	}
	if err := f.area.Commit(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range 64 {
			mu.Lock()
			f.write(int64(i*3+1)*testBS-10, 20, uint64(1000+i)) // staged and unstaged blocks
			mu.Unlock()
		}
	}()
	wg.Wait()
	f.waitApplied()
	f.equal("the volume after the apply", f.baseBytes(), f.model)
}

// TestCommitNeedsStaging: nothing to commit, and a discard of a committed
// log is refused.
func TestCommitNeedsStaging(t *testing.T) {
	f := newFixture(t)
	if err := f.area.Commit(); !errors.Is(err, ErrNotStaging) {
		t.Fatalf("commit with nothing staged: %v", err)
	}
	f.begin()
	f.write(0, testBS, 1)
	f.area.mu.Lock()
	f.area.state = Committing
	f.area.mu.Unlock()
	f.area.commit()
	if _, _, err := f.area.Discard(); !errors.Is(err, ErrCommitted) {
		t.Fatalf("discard of a committed log: %v", err)
	}
	if _, err := f.area.Begin(testBS, Begin{}); !errors.Is(err, ErrCommitted) {
		t.Fatalf("begin over a committed log: %v", err)
	}
}

// TestBeginNoRoom: more than the file system holds is refused, saying how
// much it takes, and leaves no log.
func TestBeginNoRoom(t *testing.T) {
	f := newFixture(t)
	_, err := f.area.Begin(1<<60, Begin{})
	if !errors.Is(err, ErrNoRoom) || !bytes.Contains([]byte(err.Error()), []byte("MiB")) {
		t.Fatalf("begin of 1 EiB: %v", err)
	}
	if _, err := os.Stat(f.logPath()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused begin left a log: %v", err)
	}
	if in := f.area.Info(); in.State != Idle {
		t.Fatalf("state after the refusal: %v", in.State)
	}
}

// TestTornLog: a record cut short is dropped with everything after it; a
// torn committed header leaves the log staged.
func TestTornLog(t *testing.T) {
	f := newFixture(t)
	f.begin()
	f.write(0, 4*testBS, 1)
	f.write(100*testBS, 4*testBS, 2)
	end := f.area.Info().Bytes
	f.area.mu.Lock()
	f.area.state = Committing
	f.area.mu.Unlock()
	f.area.commit()
	if err := f.area.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(f.logPath(), end-testBS); err != nil {
		t.Fatal(err)
	}
	lf, err := os.OpenFile(f.logPath(), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The committed header is the second (sequence 2: slot 0); tear it.
	if _, err := lf.WriteAt([]byte{0xff}, 30); err != nil {
		t.Fatal(err)
	}
	lf.Close()
	f.open()
	in := f.area.Info()
	if in.State != Staging || in.Blocks != 4 {
		t.Fatalf("after the tears: %+v, want staging with the first record's 4 blocks", in)
	}
	copy(f.model[100*testBS:], f.orig[100*testBS:104*testBS])
	f.equal("read after the tears", f.readAll(), f.model)
}

// TestOpenRefusesOtherGeometry: a log of another volume is not applied.
func TestOpenRefusesOtherGeometry(t *testing.T) {
	f := newFixture(t)
	f.begin()
	f.write(0, testBS, 1)
	f.area.Close()
	if _, err := Open(f.logPath(), f.base, Geometry{Size: 2 * testSize, BlockSize: testBS}, quiet); !errors.Is(err, ErrGeometry) {
		t.Fatalf("open with another size: %v", err)
	}
	f.open()
}

// TestBeginNoRoomForTheApply: a log that would fit is refused when the
// apply into a sparse volume would then lack room for the holes it fills.
func TestBeginNoRoomForTheApply(t *testing.T) {
	f := newFixture(t)
	var fs unix.Statfs_t
	if err := unix.Statfs(filepath.Dir(f.logPath()), &fs); err != nil {
		t.Fatal(err)
	}
	free := int64(fs.Bavail) * fs.Bsize
	need := free / 2 / testBS * testBS
	_, err := f.area.Begin(need, Begin{Unallocated: free})
	if !errors.Is(err, ErrNoRoom) || !strings.Contains(err.Error(), "for the apply into the sparse volume") {
		t.Fatalf("begin of half the free space into a sparse volume as large as it: %v", err)
	}
	if _, err := os.Stat(f.logPath()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused begin left a log: %v", err)
	}
}
