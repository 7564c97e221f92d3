package node

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/internal/poll"
	"github.com/ldmirror/ldmirror/mirror"
)

// TestResyncTargetShowsProgress: while a full resync runs, the secondary
// shows itself as its target with the primary's progress (not
// "replicating"), a rate raised while it runs applies at once, and the
// target is replicating again once it ended.
func TestResyncTargetShowsProgress(t *testing.T) {
	cp := newFakeCP(stateOf("a", 5, 10), stateOf("a", 5, 10))
	a, b := openPair(t, cp)
	serveSecondary(t, b)
	startPrimary(t, a, 5)
	poll.Until(t, 10*time.Second, "a to record b uptodate", func() bool {
		return slices.Contains(cp.committed(), "uptodate b@5")
	})
	a.n.SetResyncRates(256<<10, 0) // the 4 MiB volume in 16 s
	done := make(chan error, 1)
	go func() {
		_, err := a.n.Resync(context.Background(), true, false)
		done <- err
	}()
	poll.Until(t, 10*time.Second, "b to show itself as the resync target", func() bool {
		return b.n.Status().Replication == ReplicationResyncTarget
	})
	src1, tgt, src2 := a.n.Status(), b.n.Status(), a.n.Status()
	if src1.Replication != mirror.StateResyncing || tgt.ResyncTotal != src1.ResyncTotal {
		t.Fatalf("source %s %d blocks, target %s %d blocks", src1.Replication, src1.ResyncTotal, tgt.Replication, tgt.ResyncTotal)
	}
	// The target's count is the source's of at most one report ago.
	if lag := uint64((progressEvery + 100*time.Millisecond).Seconds() * (256 << 10) / 4096); tgt.ResyncDone > src2.ResyncDone || tgt.ResyncDone+lag < src1.ResyncDone {
		t.Fatalf("target at %d of %d blocks, source at %d then %d (lag at most %d)", tgt.ResyncDone, tgt.ResyncTotal, src1.ResyncDone, src2.ResyncDone, lag)
	}
	start := time.Now()
	a.n.SetResyncRates(0, 0)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(3 * time.Second): // at the old rate: 16 s
		t.Fatalf("the resync went on at the old rate after the new one was set: %+v", a.n.Status())
	}
	t.Logf("the resync ended %v after its rate was lifted", time.Since(start).Round(time.Millisecond))
	poll.Until(t, 5*time.Second, "b to replicate again", func() bool {
		return b.n.Status().Replication == mirror.StateReplicating
	})
}
