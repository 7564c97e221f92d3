package mirror

import (
	"bytes"
	"context"
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/blockdev"
	"github.com/ldmirror/ldmirror/internal/poll"
)

// afterReadDevice runs a hook after each read, with the data already read:
// the test holds a resync there, between reading a block and sending it.
type afterReadDevice struct {
	blockdev.Device
	after atomic.Pointer[func(p []byte, off int64)]
}

func (d *afterReadDevice) ReadAt(p []byte, off int64) (int, error) {
	n, err := d.Device.ReadAt(p, off)
	if h := d.after.Load(); h != nil {
		(*h)(p, off)
	}
	return n, err
}

// waitingForRangeLock reports whether an application write is parked in the
// range lock, the one place it can wait without reaching a device.
func waitingForRangeLock() bool {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		if bytes.Contains(g, []byte("sync.(*Cond).Wait")) && bytes.Contains(g, []byte("(*rangeLock).lock")) &&
			bytes.Contains(g, []byte("(*Mirror).WriteAt")) {
			return true
		}
	}
	return false
}

// TestResyncNeverOverwritesANewerWrite: an application write to block X
// issued after the resync read X's old data, but before it sent it, must not
// be undone on the secondary by that stale copy. The resync is held right
// after its read until the write either completed or waits for the range
// lock; then both hosts must hold the new data. (Holding the resync's write
// on the secondary instead would prove nothing: the replica applies
// overlapping writes in arrival order, so the new data would land last.)
func TestResyncNeverOverwritesANewerWrite(t *testing.T) {
	const blocks, x = 64, 10
	p := newPair(t)
	dev := &afterReadDevice{Device: p.primary.Device}
	p.primary.Device = dev // before any I/O: the Mirror reads through it from here on

	// Blocks 0..63 go out of sync: written while the peer is detached.
	sess := p.sess
	p.mirror.SetPeer(nil)
	for i := range blocks {
		if _, err := p.mirror.WriteAt(pattern(int64(i)), int64(i)*4096); err != nil {
			t.Fatal(err)
		}
	}
	p.mirror.SetPeer(sess)

	held, release := make(chan struct{}), make(chan struct{})
	var once atomic.Bool
	hook := func(b []byte, off int64) {
		if off <= x*4096 && x*4096 < off+int64(len(b)) && once.CompareAndSwap(false, true) {
			close(held)
			<-release
		}
	}
	dev.after.Store(&hook)
	resynced := make(chan error, 1)
	go func() { resynced <- p.mirror.Resync(context.Background(), false) }()
	select {
	case <-held:
	case <-time.After(5 * time.Second):
		t.Fatal("the resync did not read block 10 within 5 s")
	}

	newer := bytes.Repeat([]byte{0xEE}, 4096)
	wrote := make(chan error, 1)
	go func() { _, err := p.mirror.WriteAt(newer, x*4096); wrote <- err }()
	var werr error
	finished := false
	poll.Until(t, 5*time.Second, "the condition", func() bool {
		select {
		case werr = <-wrote:
			finished = true
			return true
		default:
			return waitingForRangeLock()
		}
	})
	close(release)
	if err := <-resynced; err != nil {
		t.Fatal(err)
	}
	if !finished {
		werr = <-wrote
	}
	if werr != nil {
		t.Fatal(werr)
	}
	if err := p.mirror.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{p.priPath, p.secPath} {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 4096)
		_, err = f.ReadAt(got, x*4096)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, newer) {
			t.Errorf("block %d of %s holds %x..., want the newer write's %x...", x, path, got[:8], newer[:8])
		}
	}
	if fileSum(t, p.priPath) != fileSum(t, p.secPath) {
		t.Fatal("backing files differ after the resync and the write")
	}
	if d := p.mirror.Status().DirtyBlocks; d != 0 {
		t.Fatalf("%d blocks dirty after the resync and the write", d)
	}
	t.Logf("the write %s while the resync held block %d", map[bool]string{true: "completed", false: "waited for the range lock"}[finished], x)
}
