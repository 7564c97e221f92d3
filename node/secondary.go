package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/journal"
	"github.com/ldmirror/ldmirror/mirror"
	"github.com/ldmirror/ldmirror/replica"
	"github.com/ldmirror/ldmirror/resync"
	"github.com/ldmirror/ldmirror/scoreboard"
	"github.com/ldmirror/ldmirror/transport"
	"github.com/ldmirror/ldmirror/volume"
)

// prepareSecondary sets up a secondary term: the replica, the listener, and
// the blocks this host's own scoreboard says may differ from the primary.
func (n *Node) prepareSecondary() error {
	behind, err := n.loadBehind()
	if err != nil {
		return err
	}
	// The primary writes here now: a journal of this host's own primary
	// terms must never be redone over that.
	if err := n.leaveJournal("this host became secondary: its disk takes the peer's writes"); err != nil {
		return err
	}
	tcfg := n.tcfg
	tcfg.Admit = n.admitPrimary
	ln, err := transport.Listen(n.cfg.Listen, tcfg)
	if err != nil {
		return fmt.Errorf("listen for the primary on %s: %w", n.cfg.Listen, err)
	}
	replica := replica.New(n.stage, n.meta.BlockSize, n.log)
	if n.cfg.Mode == mirror.ModeAsync {
		af, err := journal.OpenAppliedFile(filepath.Join(n.cfg.Dir, volume.AppliedFile))
		if err != nil {
			ln.Close()
			return fmt.Errorf("journal position: %w", err)
		}
		replica.SetAppliedFile(af)
		n.applied = af
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.role, n.epoch = cluster.RoleSecondary, 0
	n.replica = replica
	n.ln, n.behind = ln, behind
	n.link = LinkConnecting
	return nil
}

// loadBehind reads what this host's scoreboard knows may differ from the
// peer: the out-of-sync blocks, and after a crash as primary the activity
// log's hot extents. It records them as out of sync, so that they survive
// until the primary resynced them, and clears the crash mark.
func (n *Node) loadBehind() (*roaring.Bitmap, error) {
	if _, err := os.Stat(filepath.Join(n.cfg.Dir, volume.ScoreboardFile)); errors.Is(err, os.ErrNotExist) {
		return roaring.New(), nil // never was primary here
	}
	sb, _, err := n.openScoreboard()
	if err != nil {
		return nil, err
	}
	behind := sb.Recovered()
	behind.RunOptimize() // extents: a few runs, a small reply
	if err := errors.Join(n.recordBehind(sb, behind), sb.Close()); err != nil {
		return nil, err
	}
	if !behind.IsEmpty() {
		n.log.Warn("this host wrote as primary blocks that may differ from the new primary: they will be resynced", "blocks", behind.GetCardinality())
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.meta.PrimaryActive {
		n.meta.PrimaryActive = false
		if err := volume.Save(n.cfg.Dir, n.meta); err != nil {
			return nil, err
		}
	}
	return behind, nil
}

// recordBehind records blocks as out of sync in sb, durably, so that they
// survive until the primary resynced them.
func (n *Node) recordBehind(sb *scoreboard.Scoreboard, blocks *roaring.Bitmap) error {
	if blocks.IsEmpty() {
		return nil
	}
	sb.MarkOutOfSync(blocks)
	if err := sb.Sync(context.Background()); err != nil {
		return fmt.Errorf("record the blocks that may differ from the primary: %w", err)
	}
	return nil
}

// allBehind records every block as possibly different from the primary
// (a replaced disk) and returns them.
func (n *Node) allBehind() (*roaring.Bitmap, error) {
	all := roaring.New()
	all.AddRange(0, uint64(n.meta.Size/int64(n.meta.BlockSize)))
	sb, _, err := n.openScoreboard()
	if err != nil {
		return nil, err
	}
	return all, errors.Join(n.recordBehind(sb, all), sb.Close())
}

// clearBehind forgets the blocks that differed once the primary resynced
// them, durably.
func (n *Node) clearBehind() error {
	n.mu.Lock()
	behind := n.behind
	n.behind = roaring.New()
	n.mu.Unlock()
	if behind.IsEmpty() {
		return nil
	}
	sb, _, err := n.openScoreboard()
	if err != nil {
		return err
	}
	sb.ClearOutOfSync(behind)
	return errors.Join(sb.Sync(context.Background()), sb.Close())
}

// admitPrimary lets a primary replicate here unless the control plane names
// another (or a later epoch) or the hosts' data diverged. A split brain is
// reported here too, in status and the log, not only on the primary: the
// operator may look at either host, and must choose which one to discard.
func (n *Node) admitPrimary(peer transport.Hello) error {
	if err := n.diskFailure(); err != nil {
		return err
	}
	if n.cfg.ControlPlane != nil {
		if err := n.admitNamedPrimary(peer); err != nil {
			return err
		}
	}
	local, theirs := n.generations(), resync.Unpack(peer.Generations)
	if resync.Decide(local, theirs) != resync.SplitBrain {
		n.setRefused(nil)
		return nil
	}
	err := n.splitBrain(peer.NodeID, local, theirs)
	n.setRefused(err) // the listener logs the refusal
	return err
}

// runSecondary applies the primary's writes until ctx ends or promoted is
// closed; then it drops the primary's session, waits for the writes being
// applied and returns, ready for a primary term.
func (n *Node) runSecondary(ctx context.Context, promoted <-chan struct{}) error {
	n.mu.Lock()
	ln, replica := n.ln, n.replica
	n.mu.Unlock()
	serveCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan struct{})
	if n.cfg.ControlPlane != nil {
		go func() { defer close(done); n.dropStalePrimary(serveCtx, ln) }()
	} else {
		close(done)
	}
	watched := make(chan struct{})
	go func() { defer close(watched); n.watchSecondaryDisk(serveCtx, ln, replica) }()
	go func() {
		select {
		case <-promoted:
			n.log.Info("named primary: closing the session of the now stale primary")
			stop()
		case <-serveCtx.Done():
		}
	}()
	n.mu.Lock()
	close(n.termStart)
	n.termStart = make(chan struct{})
	n.mu.Unlock()
	n.log.Info("secondary ready", "listen", ln.Addr().String(), "volume", n.meta.VolumeUUID, "size", n.meta.Size)
	err := ln.Serve(serveCtx, n)
	stop()
	<-done
	<-watched
	replica.Wait()
	if n.applied != nil {
		err = errors.Join(err, replica.Persist(), n.applied.Close())
		n.applied = nil
	}
	n.endTerm()
	return errors.Join(err, n.dev.Flush())
}

// Handle hands data requests to the replica, reports the blocks that may
// differ here, and adopts the primary's generations when it says this host
// caught up.
func (n *Node) Handle(req *transport.Request) {
	n.mu.Lock()
	replica, behind, aborting := n.replica, n.behind, n.abort
	n.mu.Unlock()
	if aborting {
		req.Done(errAborting)
		return
	}
	switch req.Kind {
	case transport.KindStage:
		n.handleStage(req)
	case transport.KindOutOfSync:
		b, err := behind.ToBytes()
		if err == nil && len(b) > transport.MaxPayload-64 {
			// The primary then resyncs the whole volume, comparing digests.
			err = fmt.Errorf("%w: the out-of-sync set is %d bytes", transport.ErrReplyTooLarge, len(b))
		}
		req.Reply(b, err)
	case transport.KindProgress:
		n.setTargetProgress(req.Progress)
		req.Done(nil)
	case transport.KindGeneration:
		g := n.generations()
		g.SyncedFrom(resync.Unpack(req.Generations))
		err := n.setGenerations(g)
		if err == nil {
			err = n.clearBehind()
		}
		req.Done(err)
	default:
		replica.Handle(req)
	}
}
