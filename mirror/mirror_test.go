package mirror

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/blockdev"
	"github.com/ldmirror/ldmirror/internal/peertest"
	"github.com/ldmirror/ldmirror/replica"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ldmirror/ldmirror/bitmap"
	"github.com/ldmirror/ldmirror/transport"
)

const volSize = 64 << 20

// TestMain lets the test binary run as a real secondary process, which a
// test can then kill with SIGKILL.
func TestMain(m *testing.M) {
	if path := os.Getenv("LDMIRROR_TEST_SECONDARY"); path != "" {
		runSecondaryProcess(path)
		return
	}
	os.Exit(m.Run())
}

func runSecondaryProcess(path string) {
	dev, err := blockdev.OpenFile(path, volSize)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	sec, _ := peertest.Configs(volSize)
	ln, err := transport.Listen("127.0.0.1:0", sec)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	fmt.Println(ln.Addr().String())
	_ = ln.Serve(context.Background(), replica.New(dev, 4096, nil))
}

func newFile(t testing.TB, name string) string { return newFileSized(t, name, volSize) }

func newFileSized(t testing.TB, name string, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := blockdev.CreateFile(p, size, false); err != nil {
		t.Fatal(err)
	}
	return p
}

func openFile(t testing.TB, p string) *blockdev.FileDevice { return openFileSized(t, p, volSize) }

func openFileSized(t testing.TB, p string, size int64) *blockdev.FileDevice {
	t.Helper()
	d, err := blockdev.OpenFile(p, size)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// countingDevice counts flushes that reached the device, and fails writes
// like a failing disk once writeErr is set.
type countingDevice struct {
	blockdev.Device
	flushes  atomic.Int64
	writeErr atomic.Pointer[error]
}

func (d *countingDevice) WriteAt(p []byte, off int64) (int, error) {
	if err := d.writeErr.Load(); err != nil {
		return 0, *err
	}
	return d.Device.WriteAt(p, off)
}

func (d *countingDevice) Flush() error {
	d.flushes.Add(1)
	return d.Device.Flush()
}

type pair struct {
	mirror    *Mirror
	dirty     *bitmap.Set
	primary   *countingDevice
	secondary *countingDevice
	replica   *replica.Replica
	sess      *transport.Session
	secPath   string
	priPath   string
	addr      string           // the secondary's listener
	pri       transport.Config // what the primary dials with
}

// dial opens another session to the secondary (it replaces the active one).
func (p *pair) dial(t testing.TB) *transport.Session {
	t.Helper()
	s, err := transport.Dial(context.Background(), p.addr, p.pri)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// newPair runs a primary Mirror and an in-process secondary on 127.0.0.1.
func newPair(t testing.TB) *pair { return newPairWith(t, volSize, Config{}) }

// newPairSized is newPair with volumes of size bytes.
func newPairSized(t testing.TB, size int64) *pair { return newPairWith(t, size, Config{}) }

// mustNew is New that fails the test on error; cfg.Dirty, if nil, is a new
// set for a volume of dev's size.
func mustNew(t testing.TB, dev blockdev.Device, cfg Config) *Mirror {
	t.Helper()
	if cfg.Dirty == nil {
		cfg.Dirty, _ = bitmap.New(dev.Size(), 4096)
	}
	m, err := New(dev, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// newPairWith is newPair with volumes of size bytes and the mirror built
// with cfg (its dirty set made here).
func newPairWith(t testing.TB, size int64, cfg Config) *pair {
	return newPairServing(t, size, cfg, nil)
}

// newPairServing is newPairWith whose secondary applies through serve, if
// not nil: it gets the secondary's device and returns the device the
// replica applies to and the handler of the secondary's requests.
func newPairServing(t testing.TB, size int64, cfg Config, serve func(blockdev.Device, func(blockdev.Device) *replica.Replica) transport.Handler) *pair {
	t.Helper()
	p := &pair{priPath: newFileSized(t, "a.img", size), secPath: newFileSized(t, "b.img", size)}
	p.primary = &countingDevice{Device: openFileSized(t, p.priPath, size)}
	p.secondary = &countingDevice{Device: openFileSized(t, p.secPath, size)}
	newReplica := func(dev blockdev.Device) *replica.Replica {
		p.replica = replica.New(dev, 4096, nil)
		return p.replica
	}
	var h transport.Handler
	if serve != nil {
		h = serve(p.secondary, newReplica)
	} else {
		h = newReplica(p.secondary)
	}
	sec, pri := peertest.Configs(size)
	ln, err := transport.Listen("127.0.0.1:0", sec)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { defer close(served); _ = ln.Serve(ctx, h) }()
	p.addr, p.pri = ln.Addr().String(), pri
	p.sess, err = transport.Dial(ctx, p.addr, pri)
	if err != nil {
		t.Fatal(err)
	}
	p.dirty, _ = bitmap.New(size, 4096)
	cfg.Dirty = p.dirty
	p.mirror = mustNew(t, p.primary, cfg)
	p.mirror.SetPeer(p.sess)
	t.Cleanup(func() {
		p.mirror.Close()
		p.sess.Close()
		cancel()
		<-served
		p.secondary.Close()
	})
	return p
}

func fileSum(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func TestMirrorWritesReachBothHosts(t *testing.T) {
	p := newPair(t)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 32 {
				off := int64((w*32+i)%256) * 4096
				if _, err := p.mirror.WriteAt(bytes.Repeat([]byte{byte(w*32 + i)}, 4096+512), off); err != nil && off+4608 <= volSize {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if err := p.mirror.Trim(8192, 4096); err != nil {
		t.Fatal(err)
	}
	if err := p.mirror.Flush(); err != nil {
		t.Fatal(err)
	}
	if fileSum(t, p.priPath) != fileSum(t, p.secPath) {
		t.Fatal("backing files differ after a flush")
	}
	st := p.mirror.Status()
	if st.DirtyBlocks != 0 || !st.Connected || st.Replication != StateReplicating {
		t.Fatalf("status = %+v, want connected, replicating, 0 dirty", st)
	}
}

// TestFlushReachesBothHosts checks invariant 1: a flush returns only after
// both devices flushed.
func TestFlushReachesBothHosts(t *testing.T) {
	p := newPair(t)
	if _, err := p.mirror.WriteAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := p.mirror.Flush(); err != nil {
		t.Fatal(err)
	}
	if a, b := p.primary.flushes.Load(), p.secondary.flushes.Load(); a != 1 || b != 1 {
		t.Fatalf("flushes primary=%d secondary=%d, want 1 and 1", a, b)
	}
}

func TestMirrorWithoutPeerKeepsBitsAndResyncs(t *testing.T) {
	p := newPair(t)
	sess := p.sess
	p.mirror.SetPeer(nil)
	for i := range 10 {
		if _, err := p.mirror.WriteAt(bytes.Repeat([]byte{0x5A}, 4096), int64(i)*8192); err != nil {
			t.Fatal(err)
		}
	}
	if got := p.mirror.Status().DirtyBlocks; got != 10 {
		t.Fatalf("dirty = %d after 10 unshipped writes, want 10", got)
	}
	if fileSum(t, p.priPath) == fileSum(t, p.secPath) {
		t.Fatal("files equal although nothing was shipped")
	}
	p.mirror.SetPeer(sess)
	if err := p.mirror.Resync(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	if err := p.mirror.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := p.mirror.Status().DirtyBlocks; got != 0 {
		t.Fatalf("dirty = %d after resync", got)
	}
	if fileSum(t, p.priPath) != fileSum(t, p.secPath) {
		t.Fatal("files differ after resync")
	}
}

func TestCloseWaitsForWritesInFlight(t *testing.T) {
	p := newPair(t)
	var started, finished atomic.Int64
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				started.Add(1)
				_, err := p.mirror.WriteAt(make([]byte, 65536), int64((w*4+i%4)*65536))
				if err == blockdev.ErrClosed {
					started.Add(-1)
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
				finished.Add(1)
			}
		}()
	}
	for started.Load() < 100 {
		time.Sleep(time.Millisecond)
	}
	if err := p.mirror.Close(); err != nil {
		t.Fatal(err)
	}
	if d := p.dirty.Dirty(); d != 0 {
		t.Fatalf("%d blocks dirty after Close: a write in flight was not acked", d)
	}
	wg.Wait()
	if started.Load() != finished.Load() {
		t.Fatalf("%d writes started, %d finished", started.Load(), finished.Load())
	}
}

// TestSecondaryKilled kills a real secondary process with SIGKILL in the
// middle of a write stream.
func TestSecondaryKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("kills a child process; skipped with -short")
	}
	secPath := newFile(t, "b.img")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "LDMIRROR_TEST_SECONDARY="+secPath)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	addr, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	_, pri := peertest.Configs(volSize)
	pri.Timeout = time.Second
	sess, err := transport.Dial(context.Background(), addr[:len(addr)-1], pri)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	priDev := openFile(t, newFile(t, "a.img"))
	dirty, _ := bitmap.New(volSize, 4096)
	m := mustNew(t, priDev, Config{Dirty: dirty})
	defer m.Close()
	m.SetPeer(sess)

	// Four writers, each write to its own block with a recognizable
	// pattern; a write's return time says whether it returned before the
	// kill.
	const writers, perWriter = 4, 64
	var killedAt atomic.Int64 // unix nanoseconds
	returned := make([][]int64, writers)
	var issued atomic.Int64
	var afterLoss atomic.Int64
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				blk := int64(w*perWriter + i)
				if i == perWriter/2 && w == 0 {
					killedAt.Store(time.Now().UnixNano())
					if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
						t.Error(err)
					}
				}
				if !m.Status().Connected {
					afterLoss.Add(1)
				}
				issued.Add(1)
				if _, err := m.WriteAt(pattern(blk), blk*4096); err != nil {
					t.Error(err)
					return
				}
				returned[w] = append(returned[w], time.Now().UnixNano())
			}
		}()
	}
	wg.Wait()
	_ = cmd.Wait()

	st := m.Status()
	if st.Connected || st.Replication != StateLogging {
		t.Fatalf("status after the kill = %+v, want disconnected and logging", st)
	}
	// Every write that returned before the kill is on the secondary's file.
	sec, err := os.ReadFile(secPath)
	if err != nil {
		t.Fatal(err)
	}
	onSecondary := 0
	for w := range writers {
		for i := range perWriter {
			blk := int64(w*perWriter + i)
			present := bytes.Equal(sec[blk*4096:(blk+1)*4096], pattern(blk))
			if present {
				onSecondary++
			}
			if i < len(returned[w]) && returned[w][i] < killedAt.Load() && !present {
				t.Errorf("block %d returned %v before the kill but is not on the secondary (dirty=%v)", blk, time.Duration(killedAt.Load()-returned[w][i]), dirty.IsDirty(uint32(blk)))
			}
		}
	}
	// Dirty blocks are exactly the writes that did not reach the secondary,
	// give or take those in flight at the kill (applied there, ack lost):
	// at most one per writer.
	notShipped := writers*perWriter - onSecondary
	if d := int(st.DirtyBlocks); d < notShipped || d > notShipped+writers {
		t.Fatalf("dirty = %d, want %d (+ at most %d in flight)", d, notShipped, writers)
	}
	if st.DirtyBlocks < uint64(afterLoss.Load()) || st.DirtyBlocks == 0 {
		t.Fatalf("dirty = %d, but %d writes were issued after the loss was seen", st.DirtyBlocks, afterLoss.Load())
	}
	t.Logf("%d writes, %d on the secondary, %d dirty, %d issued after the loss was seen", writers*perWriter, onSecondary, st.DirtyBlocks, afterLoss.Load())
}

// pattern is block blk's content: its number repeated.
func pattern(blk int64) []byte {
	b := make([]byte, 4096)
	for i := 0; i < len(b); i += 8 {
		binary.BigEndian.PutUint64(b[i:], uint64(blk)+1)
	}
	return b
}

// TestVerifyFindsFlippedBlock is issue 4's scenario 7 in process: a bit
// flipped in one block of the secondary's file is found by Verify, exactly
// that block, and the next Resync repairs it.
func TestVerifyFindsFlippedBlock(t *testing.T) {
	p := newPair(t)
	for i := range 64 {
		if _, err := p.mirror.WriteAt(pattern(int64(i)), int64(i)*4096); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := p.mirror.Verify(context.Background(), nil); err != nil || !got.IsEmpty() {
		t.Fatalf("verify of identical volumes = %v, %v; want nothing", got, err)
	}
	f, err := os.OpenFile(p.secPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	const bad = 4000 // a block far from what was written: zeros on both
	if _, err := f.WriteAt([]byte{0x10}, bad*4096+123); err != nil {
		t.Fatal(err)
	}
	f.Close()
	var last uint64
	got, err := p.mirror.Verify(context.Background(), func(done, total uint64) { last = done })
	if err != nil {
		t.Fatal(err)
	}
	if got.GetCardinality() != 1 || !got.Contains(bad) {
		t.Fatalf("verify found %v, want exactly block %d", got.ToArray(), bad)
	}
	if last != p.dirty.Blocks() {
		t.Fatalf("progress ended at %d of %d blocks", last, p.dirty.Blocks())
	}
	if d := p.mirror.Status().DirtyBlocks; d != 1 {
		t.Fatalf("dirty = %d after verify, want 1", d)
	}
	if err := p.mirror.Resync(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	if fileSum(t, p.priPath) != fileSum(t, p.secPath) {
		t.Fatal("files differ after the resync")
	}
}

// TestChecksumResyncSendsOnlyDifferingBlocks: of 64 out-of-sync blocks, only
// the 3 that really differ travel.
func TestChecksumResyncSendsOnlyDifferingBlocks(t *testing.T) {
	p := newPair(t)
	for i := range 64 {
		if _, err := p.mirror.WriteAt(pattern(int64(i)), int64(i)*4096); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.OpenFile(p.secPath, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []int64{5, 6, 40} {
		if _, err := f.WriteAt([]byte("stale"), b*4096+7); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	all := roaring.New()
	all.AddRange(0, 64)
	p.dirty.MarkOutOfSync(all)
	before := p.mirror.Status().Bytes
	if err := p.mirror.Resync(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	st := p.mirror.Status()
	if sent := st.Bytes - before; sent != 3*4096 || st.Resync.Sent != 3 || st.Resync.Skipped != 61 || st.DirtyBlocks != 0 {
		t.Fatalf("sent %d bytes (%d blocks counted), skipped %d blocks, %d dirty; want 3 blocks sent, 61 skipped, 0 dirty", sent, st.Resync.Sent, st.Resync.Skipped, st.DirtyBlocks)
	}
	if fileSum(t, p.priPath) != fileSum(t, p.secPath) {
		t.Fatal("files differ after the checksum resync")
	}
}

// TestLocalDiskFailure: once the primary's disk fails a write, that write
// fails, and so does every later one, before it is shipped: the peer
// takes nothing the primary's disk did not (docs/operations.md, "A
// failing disk").
func TestLocalDiskFailure(t *testing.T) {
	p := newPair(t)
	if _, err := p.mirror.WriteAt(pattern(0), 0); err != nil {
		t.Fatal(err)
	}
	eio := error(&os.PathError{Op: "write", Path: p.priPath, Err: syscall.EIO})
	p.primary.writeErr.Store(&eio)
	if _, err := p.mirror.WriteAt(pattern(1), 4096); !errors.Is(err, syscall.EIO) {
		t.Fatalf("write on the failing disk: %v, want EIO", err)
	}
	select {
	case <-p.mirror.DiskFailed():
	default:
		t.Fatal("DiskFailed not closed after the local write failed")
	}
	shipped := p.replica.Status().Writes
	p.primary.writeErr.Store(nil) // even if the disk answers again
	if _, err := p.mirror.WriteAt(pattern(2), 8192); !errors.Is(err, blockdev.ErrDiskFailed) || !strings.Contains(err.Error(), "EIO") {
		t.Fatalf("write after the failure: %v, want ErrDiskFailed naming EIO", err)
	}
	if got := p.replica.Status().Writes; got != shipped {
		t.Fatalf("the peer applied %d writes after the disk failed", got-shipped)
	}
}
