package mirror

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/blockdev"
	"github.com/ldmirror/ldmirror/internal/poll"
	"github.com/ldmirror/ldmirror/replica"
	"github.com/ldmirror/ldmirror/stage"
	"github.com/ldmirror/ldmirror/transport"
)

// stagedTarget is a secondary whose replica applies through a staging
// area, which answers the Stage requests.
type stagedTarget struct {
	area    *stage.Area
	target  *stage.Target
	replica *replica.Replica
}

func (h *stagedTarget) Handle(r *transport.Request) {
	if r.Kind == transport.KindStage {
		h.target.Handle(r)
		return
	}
	h.replica.Handle(r)
}

// stagedAsOf is the time the staged target's volume is consistent as of.
var stagedAsOf = time.Unix(1700000000, 0).UTC()

// newStagedPair is newPairWith with StagePeer and a staging secondary;
// tune, if not nil, adjusts the target's policy.
func newStagedPair(t testing.TB, size int64, cfg Config, tune func(*stage.Target)) (*pair, *stagedTarget) {
	t.Helper()
	st := &stagedTarget{}
	cfg.StagePeer = true
	p := newPairServing(t, size, cfg, func(dev blockdev.Device, newReplica func(blockdev.Device) *replica.Replica) transport.Handler {
		a, err := stage.Open(filepath.Join(t.TempDir(), "resync.stage"), dev, stage.Geometry{Size: size, BlockSize: 4096}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close() })
		st.area = a
		st.target = &stage.Target{Area: a, Node: "b", Start: func() (stage.Begin, bool, string) {
			return stage.Begin{AsOf: stagedAsOf, Source: "a"}, true, ""
		}}
		if tune != nil {
			tune(st.target)
		}
		st.replica = newReplica(a)
		return st
	})
	return p, st
}

// goAway makes the peer miss writes to blocks 0, 2, 4... 126, and returns
// the session to bring it back on.
func goAway(t *testing.T, p *pair) *transport.Session {
	t.Helper()
	sess := p.sess
	p.mirror.SetPeer(nil)
	for i := range 64 {
		writeBlock(t, p.mirror, int64(2*i))
	}
	return sess
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestStagedResyncKeepsTheTargetUntilCommit: the target of a resync keeps
// its volume as it was while the resync and the writes since go to its
// staging area, through an interruption and the resume; the commit at the
// end makes it the primary's. Nobody records it inconsistent: it never is.
func TestStagedResyncKeepsTheTargetUntilCommit(t *testing.T) {
	var marks fenceLog
	p, st := newStagedPair(t, volSize, Config{ResyncStart: func(_ context.Context, staged bool) error {
		marks.add(map[bool]string{false: "inconsistent", true: "outdated"}[staged])
		return nil
	}}, nil)
	sess := goAway(t, p)
	before := readFile(t, p.secPath)

	// The peer returns: it stages before the first write reaches it.
	r, err := p.mirror.ProtectPeer(context.Background(), sess, true)
	if err != nil || r.State != transport.StageStaging || !r.AsOf.Equal(stagedAsOf) {
		t.Fatalf("protect the returning peer: %+v, %v; want staging as of %v", r, err, stagedAsOf)
	}
	p.mirror.SetPeer(sess)
	writeBlock(t, p.mirror, 501) // a write of the application, before the resync
	// The resync, slowed down and interrupted halfway.
	p.mirror.SetResyncRates(64*4096, 0)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.mirror.Resync(ctx, false) }()
	poll.Until(t, 20*time.Second, "half the resync", func() bool { return p.mirror.Status().Resync.Done >= 32 })
	writeBlock(t, p.mirror, 4) // overwrites a block the resync copied, or will
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted resync: %v", err)
	}
	if !bytes.Equal(readFile(t, p.secPath), before) {
		t.Fatal("the target's volume changed before the resync completed")
	}
	if in := st.area.Info(); in.State != stage.Staging || in.Blocks < 33 {
		t.Fatalf("the target's staging area: %+v", in)
	}
	if got := p.mirror.Status().PeerStage; got.State != transport.StageStaging {
		t.Fatalf("status shows the peer's staging as %+v", got)
	}

	// The resync resumes and completes: the peer commits, then applies in
	// the background.
	p.mirror.SetResyncRates(0, 0)
	if err := p.mirror.Resync(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	if in := st.area.Info(); in.State != stage.Applying && in.State != stage.Idle {
		t.Fatalf("the target's staging area once the resync returned: %+v; want committed", in)
	}
	if err := st.area.WaitApplied(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readFile(t, p.secPath), readFile(t, p.priPath)) {
		t.Fatal("the target's volume differs from the primary's after the commit")
	}
	if in := st.area.Info(); in.State != stage.Idle {
		t.Fatalf("the target's staging area after the commit: %+v", in)
	}
	if n, o := marks.count("inconsistent"), marks.count("outdated"); n != 0 || o == 0 {
		t.Fatalf("the staging target was recorded inconsistent %d times, outdated %d; want only outdated", n, o)
	}
	writeBlock(t, p.mirror, 600) // after the commit: straight to the volume
	if !bytes.Equal(readFile(t, p.secPath), readFile(t, p.priPath)) {
		t.Fatal("a write after the commit did not reach the target's volume")
	}
}

// TestUnprotectedResyncMarksTarget: a target with the protection off takes
// the resync unprotected, and is recorded inconsistent first, as before.
func TestUnprotectedResyncMarksTarget(t *testing.T) {
	var marks fenceLog
	p, _ := newStagedPair(t, volSize, Config{ResyncStart: func(_ context.Context, staged bool) error {
		marks.add(map[bool]string{false: "inconsistent", true: "outdated"}[staged])
		return nil
	}},
		func(tg *stage.Target) { tg.Off = true })
	sess := goAway(t, p)
	r, err := p.mirror.ProtectPeer(context.Background(), sess, true)
	if err != nil || r.State != transport.StageUnprotected || r.Reason == "" {
		t.Fatalf("protect with the protection off: %+v, %v", r, err)
	}
	p.mirror.SetPeer(sess)
	if err := p.mirror.Resync(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	if n := marks.count("inconsistent"); n != 1 {
		t.Fatalf("the unprotected target was recorded inconsistent %d times, want once", n)
	}
	if !bytes.Equal(readFile(t, p.secPath), readFile(t, p.priPath)) {
		t.Fatal("files differ after the resync")
	}
}

// refusing is a secondary that refuses to stage any resync.
type refusing struct{ r *replica.Replica }

func (h refusing) Handle(r *transport.Request) {
	if r.Kind != transport.KindStage {
		h.r.Handle(r)
		return
	}
	b, _ := transport.StageReply{State: transport.StageRefused, Reason: "b: no room to stage the resync"}.MarshalBinary()
	r.Reply(b, nil)
}

// TestRefusedStageStopsTheResync: a resync the target refuses to stage
// does not start, and says why.
func TestRefusedStageStopsTheResync(t *testing.T) {
	p := newPairServing(t, volSize, Config{StagePeer: true}, func(dev blockdev.Device, newReplica func(blockdev.Device) *replica.Replica) transport.Handler {
		return refusing{newReplica(dev)}
	})
	sess := goAway(t, p)
	before := readFile(t, p.secPath)
	p.mirror.SetPeer(sess)
	err := p.mirror.Resync(context.Background(), false)
	if !errors.Is(err, ErrStageRefused) || !bytes.Contains([]byte(err.Error()), []byte("no room")) {
		t.Fatalf("resync toward a refusing target: %v", err)
	}
	if !bytes.Equal(readFile(t, p.secPath), before) {
		t.Fatal("the refused resync changed the target")
	}
}

// TestProtectPeerStatusWhileOutOfSync: asking the peer only what it
// stages, as an async session does at its start, works while blocks are
// out of sync (a status request carries no size).
func TestProtectPeerStatusWhileOutOfSync(t *testing.T) {
	p, _ := newStagedPair(t, volSize, Config{}, nil)
	sess := goAway(t, p)
	r, err := p.mirror.ProtectPeer(context.Background(), sess, false)
	if err != nil || r.State != transport.StageIdle {
		t.Fatalf("status of the peer's staging with 64 blocks out of sync: %+v, %v; want idle", r, err)
	}
}
