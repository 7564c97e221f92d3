package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/internal/logbuf"
	"github.com/ldmirror/ldmirror/internal/peertest"
	"github.com/ldmirror/ldmirror/internal/poll"
	"github.com/ldmirror/ldmirror/volume"
)

// These tests run a primary term's data path (no FUSE export, which needs
// root: the mirror and the writeGate are driven directly) against a
// secondary term in the same process, on 127.0.0.1, with a fake control
// plane: fencing and swap against exact commits.

const pairSize = 4 << 20

// pairHost is one host of an in-process pair.
type pairHost struct {
	n    *Node
	logs *logbuf.Buffer
}

// openPair makes a's and b's volumes (one identity) and opens both with
// cp; a is named primary in epoch 5.
func openPair(t *testing.T, cp *fakeCP) (a, b *pairHost) {
	t.Helper()
	root := t.TempDir()
	id := uuid.New()
	addr := map[string]string{"a": peertest.FreeAddr(t), "b": peertest.FreeAddr(t)}
	open := func(name, peer string) *pairHost {
		dir := filepath.Join(root, name)
		if _, err := volume.Create(dir, pairSize, 4096, id, false); err != nil {
			t.Fatal(err)
		}
		logs := &logbuf.Buffer{}
		n, err := Open(Config{
			Dir: dir, NodeID: name, Listen: addr[name], Peer: addr[peer], Secret: []byte("node-test-secret-0123456789"), InsecurePlaintext: true,
			ControlPlane: cp, Timeout: 2 * time.Second,
			Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			n.Close()
			if t.Failed() {
				t.Logf("log of %s:\n%s", name, logs.String())
			}
		})
		return &pairHost{n: n, logs: logs}
	}
	return open("a", "b"), open("b", "a")
}

// serveSecondary runs b's secondary term until the test ends.
func serveSecondary(t *testing.T, b *pairHost) {
	t.Helper()
	if err := b.n.prepareSecondary(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.n.runSecondary(ctx, nil) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("b's secondary term: %v", err)
		}
	})
}

// startPrimary runs a's primary term without its export: the mirror and
// the link to b, until the test ends.
func startPrimary(t *testing.T, a *pairHost, epoch cluster.Epoch) {
	t.Helper()
	a.n.epoch = epoch
	if err := a.n.preparePrimary(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.n.connectLoop(ctx, a.n.mirror) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if err := a.n.mirror.Close(); err != nil {
			t.Errorf("close a's mirror: %v", err)
		}
		if err := a.n.stopPrimary(); err != nil {
			t.Errorf("stop a's primary term: %v", err)
		}
	})
}

// writeBlock writes one block through a's write gate, as the export would.
func (h *pairHost) writeBlock(blk int64) error {
	_, err := h.n.gate.WriteAt(make([]byte, 4096), blk*4096)
	return err
}

// TestFencePeerCommits: a primary that loses its peer retries "peer
// outdated" while there is no quorum (the write waits), then starts a new
// generation; a refusal (deposed) fails the write and is final.
func TestFencePeerCommits(t *testing.T) {
	noQuorum := fmt.Errorf("%w (fake)", cluster.ErrNoQuorum)
	for _, tc := range []struct {
		name    string
		answers []error
		want    []string // commits
		wantErr error
	}{
		{"quorum at once", nil, []string{"outdated b@5"}, nil},
		{"quorum after two tries", []error{noQuorum, noQuorum}, []string{"outdated b@5"}, nil},
		{"deposed", []error{fmt.Errorf("%w (fake)", cluster.ErrStaleEpoch)}, nil, cluster.ErrStaleEpoch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cp := newFakeCP(stateOf("a", 5, 10), stateOf("a", 5, 10))
			cp.outdate = slices.Clone(tc.answers)
			a, _ := openPair(t, cp) // b never runs: a has no peer
			startPrimary(t, a, 5)
			before := a.n.generations()
			err := a.writeBlock(1)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("write without the peer = %v, want %v", err, tc.wantErr)
			}
			if got := cp.committed(); !slices.Equal(got, tc.want) {
				t.Fatalf("commits %v, want %v", got, tc.want)
			}
			after := a.n.generations()
			if started := after.Bitmap != 0 && after.Bitmap == before.Current; started != (tc.wantErr == nil) {
				t.Fatalf("generations %v -> %v: new generation started %v, want %v", before, after, started, tc.wantErr == nil)
			}
			if len(tc.answers) > 0 && errors.Is(tc.answers[0], cluster.ErrNoQuorum) && !strings.Contains(a.logs.String(), "writes suspended: cannot mark the peer outdated without quorum") {
				t.Fatal("the log does not say that writes are suspended")
			}
		})
	}
}

// TestSwapInProcess: a swap holds new writes, flushes both hosts and
// transfers the role only when the peer holds every write; the writes held
// during a successful swap then fail (this host is no longer primary),
// those held during a refused one go on.
func TestSwapInProcess(t *testing.T) {
	cp := newFakeCP(stateOf("a", 5, 10), stateOf("a", 5, 10))
	a, b := openPair(t, cp)

	// No peer yet: refused, and nothing committed.
	a.n.epoch = 5
	if _, err := a.n.Swap(context.Background()); !errors.Is(err, cluster.ErrNotPrimary) {
		t.Fatalf("swap before the primary term = %v, want ErrNotPrimary", err)
	}
	serveSecondary(t, b)
	startPrimary(t, a, 5)
	poll.Until(t, 10*time.Second, "a to record b uptodate", func() bool {
		return slices.Contains(cp.committed(), "uptodate b@5")
	})
	for blk := range int64(8) {
		if err := a.writeBlock(blk); err != nil {
			t.Fatal(err)
		}
	}
	cp.mu.Lock()
	cp.transfer = fmt.Errorf("%w (fake)", cluster.ErrNoQuorum)
	cp.mu.Unlock()
	if _, err := a.n.Swap(context.Background()); !errors.Is(err, cluster.ErrNoQuorum) {
		t.Fatalf("swap without quorum = %v, want ErrNoQuorum", err)
	}
	if err := a.writeBlock(9); err != nil {
		t.Fatalf("a write after a refused swap: %v", err)
	}
	cp.mu.Lock()
	cp.transfer = nil
	cp.mu.Unlock()
	epoch, err := a.n.Swap(context.Background())
	if err != nil || epoch != 6 {
		t.Fatalf("swap = %d, %v; want epoch 6", epoch, err)
	}
	if got := cp.committed(); !slices.Contains(got, "transfer a>b@5") {
		t.Fatalf("commits %v: no transfer to b in epoch 5", got)
	}
	if err := a.writeBlock(10); !errors.Is(err, ErrDemoted) {
		t.Fatalf("a write after the swap = %v, want ErrDemoted", err)
	}
}
