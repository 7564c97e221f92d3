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
	"github.com/ldmirror/ldmirror/transport"
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

// TestRestartedSecondaryNotReady: a secondary that restarted answers the
// primary "not ready yet" until it has read the control plane's state, and
// the primary then retries within 0.2 s, neither after its backoff for a
// host that is down nor after the 5 s of a refusal; it connects moments
// after the secondary read the state.
func TestRestartedSecondaryNotReady(t *testing.T) {
	cp := newFakeCP(stateOf("a", 5, 10), stateOf("a", 5, 10))
	cp.setQuorum(false) // b cannot read the state yet
	a, b := openPair(t, cp)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("b's Run: %v", err)
		}
	})
	startPrimary(t, a, 5)
	refusals := func() int {
		return strings.Count(a.logs.String(), "not ready yet: this host has not read the control plane's state")
	}
	poll.Until(t, 10*time.Second, "a to be told that b is not ready", func() bool { return refusals() > 0 })
	first := time.Now()
	// Each retry comes 0.2 s after the last, not after a backoff that
	// grows (a host that is down) nor after 5 s (a refusal).
	poll.Until(t, 10*time.Second, "a to retry four times", func() bool { return refusals() >= 5 })
	if took := time.Since(first); took > 4*time.Second {
		t.Fatalf("a retried four times in %v; want about 0.8 s (after a refusal it waits 5 s each time)", took)
	}
	if a.n.mirror.Session() != nil {
		t.Fatal("a connected before b read the control plane's state")
	}
	readable := time.Now()
	cp.setQuorum(true)
	poll.Until(t, 10*time.Second, "a to connect to b", func() bool { return a.n.mirror.Session() != nil })
	// b reads the state within 0.25 s, a retries within 0.2 s.
	if took := time.Since(readable); took > 3*time.Second {
		t.Fatalf("a connected %v after b could read the control plane's state", took)
	}
	if strings.Contains(a.logs.String(), "peer refused the connection; retrying") {
		t.Fatal("a took b's answer for a refusal (5 s backoff)")
	}
}

// TestAdmitNotReadyWhileCopyLags: a secondary whose copy of the control
// plane is older than the epoch a primary presents tells it to come back
// in a moment; one that presents an older epoch is stale.
func TestAdmitNotReadyWhileCopyLags(t *testing.T) {
	cp := newFakeCP(stateOf("b", 4, 9), stateOf("b", 4, 9))
	_, b := openPair(t, cp)
	for _, tc := range []struct {
		hello    transport.Hello
		notReady bool
		stale    bool
	}{
		{transport.Hello{NodeID: "a", Epoch: 5}, true, false},
		{transport.Hello{NodeID: "a", Epoch: 4}, false, true},
		{transport.Hello{NodeID: "a", Epoch: 3}, false, true},
	} {
		err := b.n.admitNamedPrimary(tc.hello)
		if errors.Is(err, transport.ErrNotReady) != tc.notReady || errors.Is(err, transport.ErrStaleEpoch) != tc.stale {
			t.Errorf("%s in epoch %d: %v; want not ready %t, stale %t", tc.hello.NodeID, tc.hello.Epoch, err, tc.notReady, tc.stale)
		}
	}
}
