package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ldmirror/ldmirror/bitmap"
	"github.com/ldmirror/ldmirror/blockdev"
	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/export"
	"github.com/ldmirror/ldmirror/journal"
	"github.com/ldmirror/ldmirror/mirror"
	"github.com/ldmirror/ldmirror/resync"
	"github.com/ldmirror/ldmirror/scoreboard"
	"github.com/ldmirror/ldmirror/transport"
	"github.com/ldmirror/ldmirror/volume"
)

// preparePrimary sets up a primary term: the dirty set, the scoreboard and
// the mirror over the backing file.
func (n *Node) preparePrimary() error {
	dirty, err := bitmap.New(n.meta.Size, n.meta.BlockSize)
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.dirty = dirty
	n.mu.Unlock()
	local := keepOpen{n.dev} // the backing file outlives the term
	var mr *mirror.Mirror
	if n.cfg.Passthrough || n.cfg.Mode != mirror.ModeAsync {
		// This term's writes are not journaled: a journal left from an
		// async term must never be redone over them, nor a position in
		// the peer's journal claimed.
		mode := "sync"
		if n.cfg.Passthrough {
			mode = "passthrough"
		}
		if err := n.leaveJournal("this host wrote as primary in " + mode + " mode"); err != nil {
			return err
		}
		if _, err := n.forgetApplied(); err != nil {
			return err
		}
	}
	cfg := mirror.Config{Dirty: dirty, Log: n.log}
	if !n.cfg.Passthrough {
		discard, err := n.startPrimary()
		if err != nil {
			return err
		}
		cfg.Intent = n.sb
		if n.cfg.NoActivityLog {
			cfg.Intent = outOfSyncOnly{n.sb}
			n.log.Warn("activity log off: after a crash of this primary, blocks written just before it may differ on the peer without being resynced")
		}
		cfg.ResyncRate, cfg.ResyncMinRate = n.cfg.ResyncRate, n.cfg.ResyncMinRate
		if n.cfg.ControlPlane != nil {
			n.tcfg.Epoch = uint64(n.epoch)
			cfg.Fence, cfg.ResyncStart = n.fencePeer(n.epoch), n.markPeerInconsistent(n.epoch)
		}
		if n.cfg.Mode == mirror.ModeAsync {
			ac, err := n.openJournal(discard)
			if err != nil {
				return errors.Join(err, n.stopPrimary())
			}
			ac.Resynced = func(ctx context.Context) {
				if s := mr.Session(); s != nil {
					n.peerInSync(ctx, mr, s, false)
				}
			}
			cfg.Async = &ac
		}
	}
	if mr, err = mirror.New(local, cfg); err != nil {
		if cfg.Async != nil {
			cfg.Async.Journal.Close()
		}
		if !n.cfg.Passthrough {
			err = errors.Join(err, n.stopPrimary())
		}
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.role, n.mirror, n.gate = RolePrimary, mr, &writeGate{Device: mr}
	n.link = LinkStandalone
	if n.cfg.Peer != "" {
		n.link = LinkConnecting
	}
	return nil
}

// openJournal opens the journal for this primary term in async mode
// (resuming the one of the previous run, redone onto the backing file,
// unless it cannot be: see mirror.OpenJournal, and discard says why not).
// Only the journal of this host's own primary terms goes on: a secondary
// term discards it (prepareSecondary), and this term forgets the position
// this host applied in its peer's journal.
func (n *Node) openJournal(discard string) (mirror.AsyncConfig, error) {
	first, err := n.forgetApplied()
	if err != nil {
		return mirror.AsyncConfig{}, err
	}
	path := filepath.Join(n.cfg.Dir, volume.JournalFile)
	st, err := mirror.OpenJournal(context.Background(), path, n.dev,
		mirror.JournalOptions{Capacity: n.cfg.JournalSize, FirstSeq: first, Discard: discard})
	if err != nil {
		return mirror.AsyncConfig{}, fmt.Errorf("journal: %w", err)
	}
	j := st.Journal
	authority, why := j.Authority()
	switch {
	case st.Resumed && authority != journal.NoAuthority:
		n.log.Info("async mode: journal resumed; a peer at or past its authority catches up from it",
			"journal", path, "records_redone", st.Redone, "authority", authority, "next_seq", j.Next())
	case st.Resumed:
		n.log.Warn("async mode: journal resumed without authority: the next catch-up is a bitmap resync",
			"journal", path, "records_redone", st.Redone, "reason", why)
	case st.Discarded != "":
		n.log.Warn("async mode: the journal of the previous run was discarded: the next catch-up is a bitmap resync",
			"reason", st.Discarded, "records_redone", st.Redone, "first_seq", j.Next())
	default:
		n.log.Info("async mode: new journal", "journal", path, "first_seq", j.Next())
	}
	n.log.Info("async mode: writes return once in the journal", "journal", path, "capacity", j.Capacity(), "on_full", n.cfg.OnFull)
	return mirror.AsyncConfig{Journal: j, OnFull: n.cfg.OnFull, Discarded: st.Discarded, DiscardedID: st.DiscardedID}, nil
}

// forgetApplied makes this host forget the position it applied, as a
// secondary, in its peer's journal, and returns the sequence number its own
// journal numbers from at least. A host that writes as primary must not
// later claim that position: its disk no longer holds what it says.
func (n *Node) forgetApplied() (uint64, error) {
	path := filepath.Join(n.cfg.Dir, volume.AppliedFile)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return 1, nil
	}
	af, err := journal.OpenAppliedFile(path)
	if err != nil {
		n.log.Warn("the applied journal position cannot be read; removing it", "err", err)
		if err := os.Remove(path); err != nil {
			return 1, fmt.Errorf("remove the applied journal position: %w", err)
		}
		return 1, nil
	}
	pos := af.Position()
	err = af.Store(journal.Position{Seq: pos.Seq}) // the numbering stays
	return pos.Seq + 1, errors.Join(err, af.Close())
}

// leaveJournal discards the journal of an earlier async primary term, if
// there is one, before this host writes, or takes writes, that it does not
// hold: why says which.
func (n *Node) leaveJournal(why string) error {
	done, err := journal.Discard(filepath.Join(n.cfg.Dir, volume.JournalFile), why)
	if err != nil {
		return fmt.Errorf("discard the journal: %w", err)
	}
	if done {
		n.log.Info("the journal of an earlier async primary term is discarded: it must never be replayed", "reason", why)
	}
	return nil
}

// keepOpen is the backing file as a term's mirror sees it: closing the
// mirror flushes the file but leaves it open for the next term.
type keepOpen struct{ blockdev.Device }

func (keepOpen) Close() error { return nil }

// startPrimary opens the scoreboard and records that this host now writes
// as primary. The blocks the peer may miss are the scoreboard's out-of-sync
// map and, after a crash, every block of the activity log's hot extents.
// If it marks the whole volume out of sync, it says why: the journal of
// the previous run cannot cover that.
func (n *Node) startPrimary() (fullResync string, err error) {
	m := &n.meta
	sb, created, err := n.openScoreboard()
	if err != nil {
		return "", err
	}
	if m.Generations.Discarded() {
		sb.Close()
		return "", errors.New("this host discarded its data (ldmirror resolve): run it as secondary until the peer resynced it")
	}
	behind := m.PrimaryActive || m.Generations.Bitmap != 0
	n.mu.Lock()
	n.sb = sb
	n.mu.Unlock()
	switch {
	case created && behind:
		// A volume from before the scoreboard existed: what the peer misses
		// is not known.
		fullResync = "no scoreboard from the previous run: the whole volume is resynced"
		if err := n.markAllOutOfSync(nil, fullResync); err != nil {
			sb.Close()
			return "", err
		}
		n.log.Warn("no scoreboard from the previous run: the whole volume will be resynced to the peer")
	default:
		rec := sb.Recovered()
		n.dirty.MarkOutOfSync(rec)
		if m.PrimaryActive {
			n.crashed = true
			n.log.Warn("the primary did not stop cleanly: resyncing the activity log's extents and the out-of-sync blocks, comparing checksums first",
				"blocks", rec.GetCardinality())
		}
	}
	// Without a control plane, a host that crashed or runs alone writes
	// without its peer from now on. With one, that starts only when the
	// control plane marked the peer outdated (fencePeer): a host that
	// merely restarted, or lost the role meanwhile, has written nothing the
	// peer lacks and acknowledged.
	if (m.PrimaryActive || n.cfg.Peer == "") && n.cfg.ControlPlane == nil {
		m.Generations.StartTracking()
	}
	m.PrimaryActive = true
	if err := volume.Save(n.cfg.Dir, *m); err != nil {
		sb.Close()
		return "", err
	}
	return fullResync, nil
}

// openScoreboard opens the volume's scoreboard, creating it if there is none.
func (n *Node) openScoreboard() (sb *scoreboard.Scoreboard, created bool, err error) {
	geom := scoreboard.Geometry{VolumeSize: n.meta.Size, BlockSize: n.meta.BlockSize}
	path := filepath.Join(n.cfg.Dir, volume.ScoreboardFile)
	sb, err = scoreboard.Open(path, geom, scoreboard.Options{})
	if errors.Is(err, os.ErrNotExist) {
		sb, err = scoreboard.Create(path, geom, scoreboard.Options{})
		created = true
	}
	return sb, created, err
}

// markAllOutOfSync marks every block for a full resync, in memory and
// durably, so a crash before the resync ends does not shrink it.
func (n *Node) markAllOutOfSync(mr *mirror.Mirror, why string) error {
	n.dirty.MarkAllOutOfSync()
	return n.markOutOfSync(mr, n.dirty.OutOfSync(), why)
}

// markOutOfSync adds blocks to the resync, in memory and durably, through
// the term's mirror once there is one: in async mode its journal must
// first give up catching the peer up over them (why says why).
func (n *Node) markOutOfSync(mr *mirror.Mirror, blocks *roaring.Bitmap, why string) error {
	if mr != nil {
		if err := mr.MarkOutOfSync(blocks, why); err != nil {
			return err
		}
	} else {
		n.dirty.MarkOutOfSync(blocks)
		n.sb.MarkOutOfSync(blocks)
	}
	if err := n.sb.Sync(context.Background()); err != nil {
		return fmt.Errorf("record the blocks to resync: %w", err)
	}
	return nil
}

// stopPrimary records a clean stop: the scoreboard persists the blocks the
// peer still misses. Without a control plane, if there are any, this host
// stays in a generation of its own; with one, the generation changed when
// the peer was marked outdated, or the blocks were never acknowledged.
func (n *Node) stopPrimary() error {
	if err := n.sb.Close(); err != nil {
		return fmt.Errorf("close scoreboard: %w", err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.sb = nil
	if n.dirty.Dirty() > 0 && n.cfg.ControlPlane == nil {
		n.meta.Generations.StartTracking()
	}
	n.meta.PrimaryActive = false
	return volume.Save(n.cfg.Dir, n.meta)
}

// runPrimary serves the volume as primary until ctx ends or, with a control
// plane, until lost is closed: then it stops taking writes, waits for the
// export to be released and returns, ready for a secondary term.
func (n *Node) runPrimary(ctx context.Context, lost <-chan struct{}) error {
	n.mu.Lock()
	mr, gate := n.mirror, n.gate
	n.mu.Unlock()
	var dev blockdev.Device = gate
	if n.cfg.Passthrough {
		dev = keepOpen{n.dev}
		n.log.Warn("passthrough mode: no mirroring, no dirty tracking (benchmark baseline only)")
	}
	exp, err := export.Mount(dev, n.cfg.MountDir, n.log)
	if err != nil {
		return errors.Join(err, n.endPrimary(mr))
	}
	n.mu.Lock()
	n.export = exp
	close(n.termStart)
	n.termStart = make(chan struct{})
	n.mu.Unlock()
	n.log.Info("primary ready", "export", exp.Path(), "peer", n.cfg.Peer, "epoch", n.epoch, "volume", n.meta.VolumeUUID, "size", n.meta.Size)

	linkCtx, stopLink := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	if n.cfg.Peer != "" {
		wg.Add(1)
		go func() { defer wg.Done(); n.connectLoop(linkCtx, mr) }()
	}
	released := false
	select {
	case <-ctx.Done():
		n.log.Info("shutting down: completing writes in flight")
	case <-lost:
		n.log.Warn("this host lost the primary role: refusing writes, waiting for the export to be released", "epoch", n.epoch)
		gate.close(ErrDemoted) // waits for writes in flight
		released = n.releaseExport(ctx, exp)
	}
	// Close the mirror first: it waits for in-flight writes to be acked (or
	// fail) while the link is still up, then flushes.
	closeErr := mr.Close()
	stopLink()
	wg.Wait()
	if !n.cfg.Passthrough && closeErr == nil {
		closeErr = n.stopPrimary()
	}
	var unmountErr error
	if !released {
		if devs := export.LoopDevicesOf(exp.Path()); len(devs) > 0 {
			n.log.Warn("loop devices still attached to the export; detaching the mount lazily", "devices", devs)
		}
		unmountErr = exp.UnmountLazy()
	}
	n.endTerm()
	return errors.Join(closeErr, unmountErr)
}

// endPrimary undoes preparePrimary for a term that did not start.
func (n *Node) endPrimary(mr *mirror.Mirror) error {
	err := mr.Close()
	if !n.cfg.Passthrough {
		err = errors.Join(err, n.stopPrimary())
	}
	n.endTerm()
	return err
}

// ErrDemoted fails the writes that reach a host after it lost the primary
// role.
var ErrDemoted = errors.New("this host is no longer primary")

// releaseExport waits until nothing uses the export (the directory server
// stopped, the file system unmounted, the loop device detached: the agent's
// demotion hooks or the operator do that) and unmounts it. It reports false
// if ctx ended first.
func (n *Node) releaseExport(ctx context.Context, exp *export.FUSE) bool {
	t := time.NewTicker(fenceRetry)
	defer t.Stop()
	for {
		var waiting string
		if devs := export.LoopDevicesOf(exp.Path()); len(devs) > 0 {
			waiting = "loop device " + strings.Join(devs, ", ") + " to be detached (stop the directory server, umount, ldmirror detach)"
		} else if err := exp.Unmount(); err != nil {
			waiting = "the export to be closed by the processes that hold it open (" + err.Error() + ")"
		} else {
			n.setTransition("")
			return true
		}
		if n.setTransition("demoted: waiting for " + waiting) {
			n.log.Warn("demoted: waiting for " + waiting)
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}

// setTransition records what a role change waits for and reports whether
// it changed.
func (n *Node) setTransition(s string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	changed := n.transition != s
	n.transition = s
	return changed
}

// endTerm forgets the parts of the term that ended.
func (n *Node) endTerm() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.mirror, n.gate, n.export, n.replica, n.ln = nil, nil, nil, nil, nil
	n.link, n.peerNode, n.transition = LinkStandalone, "", ""
}

// connectLoop keeps a session to the peer: dial with backoff, decide the
// resync direction from both hosts' generations, resync what went out of
// sync, replicate until the session breaks, repeat.
func (n *Node) connectLoop(ctx context.Context, mr *mirror.Mirror) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		s, err := transport.Dial(ctx, n.cfg.Peer, n.tcfg)
		if err == nil {
			err = n.admit(s, mr)
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			n.log.Debug("connect to peer failed", "peer", n.cfg.Peer, "err", err)
			switch {
			case errors.Is(err, transport.ErrAuth) || errors.Is(err, transport.ErrVolumeMismatch) || errors.Is(err, ErrPeerRefused):
				// Wrong secret, another volume, a split brain: retrying
				// alone does not fix these.
				n.log.Error("peer refused: the operator must act; retrying", "peer", n.cfg.Peer, "err", err)
				n.setRefused(err)
				backoff = 5 * time.Second
			case errors.Is(err, transport.ErrPeerRefused):
				// Mostly an epoch the peer does not admit: this host was
				// deposed (its role loop steps down) or the peer's copy of
				// the control plane lags; either clears by itself. The
				// peer's own status names a refusal the operator must fix.
				n.log.Warn("peer refused the connection; retrying", "peer", n.cfg.Peer, "err", err)
				n.setRefused(err)
				backoff = 5 * time.Second
			}
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		n.setRefused(nil)
		n.setPeerGenerations(resync.Unpack(s.Peer().Generations))
		n.setLink(LinkConnected, s.Peer().NodeID)
		n.log.Info("peer connected", "peer", n.cfg.Peer, "node", s.Peer().NodeID)
		mr.SetPeer(s)
		n.catchUp(ctx, s, mr)
		select {
		case <-s.Done():
			n.log.Warn("peer link lost", "peer", n.cfg.Peer, "err", s.Err())
		case <-ctx.Done():
		}
		s.Close()
		mr.SetPeer(nil)
		n.setLink(LinkDisconnected, "")
		if ctx.Err() == nil {
			n.peerLost()
		}
	}
}

// ErrPeerRefused reports a peer this primary will not replicate to: its
// data is newer, diverged (split brain), or unrelated.
var ErrPeerRefused = errors.New("peer refused")

// splitBrain describes a split brain with peerID for status and logs. The
// operator decides which side's writes survive; it says how.
func (n *Node) splitBrain(peerID string, local, peer resync.Generations) error {
	return fmt.Errorf("split brain: %s and %s both wrote since they last agreed (generations %s %v, %s %v); "+
		"on the host whose changes are to be thrown away, stop the daemon, run `ldmirror resolve --dir DIR --discard-local` and start it as secondary",
		n.cfg.NodeID, peerID, n.cfg.NodeID, local, peerID, peer)
}

// admit decides, from the generations, whether this primary may bring the
// peer up to date (resync.Admit), and closes the session if not.
func (n *Node) admit(s *transport.Session, mr *mirror.Mirror) error {
	local, peer := n.generations(), resync.Unpack(s.Peer().Generations)
	full, err := resync.Admit(local, peer)
	switch {
	case errors.Is(err, resync.ErrSplitBrain):
		s.Close()
		return fmt.Errorf("%w: %w", ErrPeerRefused, n.splitBrain(s.Peer().NodeID, local, peer))
	case err != nil:
		s.Close()
		return fmt.Errorf("%w: %w (generations local %v, peer %v)", ErrPeerRefused, err, local, peer)
	case full:
		n.log.Warn("the peer is older than the changes tracked here: resyncing the whole volume", "local", local, "peer", peer)
		if err := n.markAllOutOfSync(mr, "the peer is older than the changes tracked here: whole volume resynced"); err != nil {
			s.Close()
			return err
		}
	}
	return nil
}

// peerBehind asks the peer for the blocks it knows may differ: what it
// wrote as primary and this host may lack.
func (n *Node) peerBehind(s *transport.Session) (resync.Behind, error) {
	call, err := s.SubmitOutOfSync()
	if err != nil {
		return resync.Behind{}, err
	}
	body, err := call.WaitReply()
	if errors.Is(err, transport.ErrReplyTooLarge) {
		return resync.Behind{TooLarge: true}, nil
	}
	if err != nil {
		return resync.Behind{}, fmt.Errorf("ask the peer for its out-of-sync blocks: %w", err)
	}
	b := roaring.New()
	if err := b.UnmarshalBinary(body); err != nil {
		return resync.Behind{}, fmt.Errorf("the peer's out-of-sync blocks: %w", err)
	}
	if !b.IsEmpty() {
		if blocks := n.dirty.Blocks(); uint64(b.Maximum()) >= blocks {
			return resync.Behind{}, fmt.Errorf("the peer's out-of-sync blocks go up to block %d, the volume has %d", b.Maximum(), blocks)
		}
	}
	return resync.Behind{Blocks: b}, nil
}

// planCatchUp asks the peer what it is behind by, plans the catch-up and
// marks the blocks it adds out of sync, durably.
func (n *Node) planCatchUp(s *transport.Session, mr *mirror.Mirror) (resync.CatchUp, error) {
	behind, err := n.peerBehind(s)
	if err != nil {
		return resync.CatchUp{}, err
	}
	plan := resync.PlanCatchUp(behind, n.crashed, n.cfg.ResyncChecksum)
	switch {
	case plan.Full:
		n.log.Warn("the peer's out-of-sync set is too large to send: resyncing the whole volume, comparing checksums")
		err = n.markAllOutOfSync(mr, "the peer's out-of-sync blocks are too many to send: whole volume resynced")
	case plan.Extra != nil:
		n.log.Info("the peer wrote blocks as primary that may differ here: adding them to the resync", "blocks", plan.Extra.GetCardinality())
		err = n.markOutOfSync(mr, plan.Extra, "the peer wrote blocks as primary that may differ here")
	}
	return plan, err
}

// catchUp copies the out-of-sync blocks to the peer and, once it holds
// everything durably, tells it to adopt this host's generation.
func (n *Node) catchUp(ctx context.Context, s *transport.Session, mr *mirror.Mirror) {
	n.resyncMu.Lock()
	defer n.resyncMu.Unlock()
	plan, err := n.planCatchUp(s, mr)
	if err != nil {
		n.log.Warn("resync not started", "err", err)
		s.Close()
		return
	}
	peerBehind := plan.Full || plan.Extra != nil
	if err := n.catchUpRetrying(ctx, s, mr, plan.Checksum); err != nil {
		if ctx.Err() == nil {
			n.log.Warn("resync stopped", "err", err)
		}
		return
	}
	n.crashed = false
	n.peerInSync(ctx, mr, s, peerBehind)
}

// errGenerationMoved reports that this host's generation changed (a fence
// started a new one) while the peer was being recorded in sync.
var errGenerationMoved = errors.New("this host's generation changed meanwhile")

// peerInSync, once a resync brought the peer up to date, hands it this
// host's generation if it lacks it (after draining and flushing, so the
// peer holds everything durably) and records it uptodate with the control
// plane. Both happen under the mirror's fence lock (CommitInSync), so a
// fence cannot start a new generation between them; if one did before,
// it starts over. behind: the peer wrote as primary, so it must adopt this
// host's generation even if they look equal.
func (n *Node) peerInSync(ctx context.Context, mr *mirror.Mirror, s *transport.Session, behind bool) {
	for {
		local := n.generations()
		handoff := resync.NeedsHandOff(local, n.peerGenerations(), behind)
		if handoff {
			if err := mr.Drain(ctx); err != nil { // async: the peer holds the journal
				n.log.Warn("could not drain the journal to the peer after the resync", "err", err)
				return
			}
			if err := mr.Flush(); err != nil {
				n.log.Warn("flush after resync failed", "err", err)
				return
			}
		}
		err := n.recordPeerInSync(ctx, mr, s.Peer().NodeID, func() error {
			if n.generations() != local {
				return errGenerationMoved
			}
			if !handoff {
				return nil
			}
			synced := local
			synced.Synced()
			call, err := s.SubmitGeneration(synced.Pack())
			if err == nil {
				err = call.Wait()
			}
			if err == nil {
				err = n.setGenerations(synced)
			}
			if err != nil {
				return fmt.Errorf("record that the peer caught up: %w", err)
			}
			n.setPeerGenerations(synced)
			behind = false
			return nil
		})
		if !errors.Is(err, errGenerationMoved) || ctx.Err() != nil {
			return
		}
	}
}

// catchUpRetrying runs mirror.CatchUp, again while it cannot start because
// the control plane has no quorum to record the peer inconsistent first.
func (n *Node) catchUpRetrying(ctx context.Context, s *transport.Session, mr *mirror.Mirror, checksum bool) error {
	for warned := false; ; {
		err := mr.CatchUp(ctx, checksum)
		if err == nil || !errors.Is(err, mirror.ErrTargetNotMarked) || !errors.Is(err, cluster.ErrNoQuorum) {
			return err
		}
		if !warned {
			n.log.Warn("resync waits: the control plane must record the peer inconsistent first (no quorum); retrying", "err", err)
			warned = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.Done():
			return s.Err()
		case <-time.After(fenceRetry):
		}
	}
}

// peerLost starts a new generation: from now on this host writes alone.
// With a control plane that happens when the peer is marked outdated.
func (n *Node) peerLost() {
	if n.cfg.ControlPlane != nil {
		return
	}
	if err := n.startTracking(); err != nil {
		n.log.Error("could not persist the new generation", "err", err)
	}
}

// startTracking starts a new generation, durably, unless one is running.
func (n *Node) startTracking() error {
	g := n.generations()
	if !g.StartTracking() {
		return nil
	}
	return n.setGenerations(g)
}

// primaryParts returns the running primary term's mirror and dirty set.
func (n *Node) primaryParts() (*mirror.Mirror, *bitmap.Set, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.role != RolePrimary || n.mirror == nil || n.cfg.Passthrough {
		return nil, nil, ErrNotPrimary
	}
	return n.mirror, n.dirty, nil
}

// VerifyResult is what `ldmirror verify` reports.
type VerifyResult struct {
	Blocks     uint64   `json:"blocks_checked"`
	OutOfSync  uint64   `json:"out_of_sync_blocks"`
	FirstFound []uint32 `json:"first_out_of_sync,omitempty"` // at most 100
	Repaired   bool     `json:"repaired"`
	Seconds    float64  `json:"seconds"`
}

// Verify compares every block with the peer's and resyncs those that differ.
func (n *Node) Verify(ctx context.Context) (VerifyResult, error) {
	var res VerifyResult
	mr, dirty, err := n.primaryParts()
	if err != nil {
		return res, err
	}
	n.mu.Lock()
	if n.verifying {
		n.mu.Unlock()
		return res, fmt.Errorf("verify: %w", ErrBusy)
	}
	n.verifying = true
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		n.verifying = false
		n.mu.Unlock()
	}()
	start := time.Now()
	if err := mr.Drain(ctx); err != nil { // async: records in flight would look different
		return res, fmt.Errorf("verify: %w", err)
	}
	differ, err := mr.Verify(ctx, func(done, total uint64) {
		n.mu.Lock()
		n.verified = [2]uint64{done, total}
		n.mu.Unlock()
	})
	res.Blocks = dirty.Blocks()
	if differ != nil {
		res.OutOfSync = differ.GetCardinality()
		it := differ.Iterator()
		for it.HasNext() && len(res.FirstFound) < 100 {
			res.FirstFound = append(res.FirstFound, it.Next())
		}
	}
	if err == nil && res.OutOfSync > 0 {
		n.resyncMu.Lock()
		err = mr.Resync(ctx, false) // verify just found them different
		n.resyncMu.Unlock()
		res.Repaired = err == nil
		if s := mr.Session(); err == nil && s != nil {
			n.peerInSync(ctx, mr, s, false)
		}
	}
	res.Seconds = time.Since(start).Seconds()
	n.log.Info("verify finished", "blocks", res.Blocks, "out_of_sync", res.OutOfSync, "repaired", res.Repaired, "err", err)
	return res, err
}

// outOfSyncOnly is the scoreboard without its activity log: writes are not
// announced, only those that failed to reach the peer are recorded.
type outOfSyncOnly struct{ *scoreboard.Scoreboard }

func (outOfSyncOnly) BeginWrite(context.Context, bitmap.Extent) error { return nil }

func (o outOfSyncOnly) EndWrite(e bitmap.Extent, inSync bool) {
	if !inSync {
		b := roaring.New()
		b.AddRange(uint64(e.First), uint64(e.Last)+1)
		o.MarkOutOfSync(b)
	}
}

// ResyncResult is what `ldmirror resync` reports.
type ResyncResult struct {
	Blocks  uint64  `json:"blocks"`         // out of sync when it started
	Skipped uint64  `json:"skipped_blocks"` // found equal by checksum
	Seconds float64 `json:"seconds"`
}

// Resync copies the out-of-sync blocks to the peer now; full marks every
// block out of sync first (after the peer's disk was replaced, say), and
// checksum sends only the blocks whose checksums differ.
func (n *Node) Resync(ctx context.Context, full, checksum bool) (ResyncResult, error) {
	var res ResyncResult
	mr, dirty, err := n.primaryParts()
	if err != nil {
		return res, err
	}
	if !mr.Status().Connected {
		return res, fmt.Errorf("resync: %w", transport.ErrDisconnected)
	}
	n.resyncMu.Lock()
	defer n.resyncMu.Unlock()
	if full {
		if err := n.markAllOutOfSync(mr, "a full resync was requested"); err != nil {
			return res, err
		}
	}
	start := time.Now()
	skipped := mr.Status().Resync.Skipped
	res.Blocks = dirty.OutOfSync().GetCardinality()
	err = mr.Resync(ctx, checksum)
	if s := mr.Session(); err == nil && s != nil {
		n.peerInSync(ctx, mr, s, false)
	}
	res.Skipped = mr.Status().Resync.Skipped - skipped
	res.Seconds = time.Since(start).Seconds()
	n.log.Info("resync requested by the operator finished", "full", full, "checksum", checksum, "blocks", res.Blocks, "skipped", res.Skipped, "err", err)
	return res, err
}

// writeGate is the device a primary term exports: the mirror, until the
// term ends or a swap holds it. Holding it lets the writes in flight
// finish and makes new ones wait; closing it fails them for good.
type writeGate struct {
	blockdev.Device
	mu  sync.RWMutex
	err error // once set, writes fail with it
}

func (g *writeGate) enter() error {
	g.mu.RLock()
	if g.err != nil {
		g.mu.RUnlock()
		return g.err
	}
	return nil
}

// WriteAt writes through the mirror unless the gate is closed.
func (g *writeGate) WriteAt(p []byte, off int64) (int, error) {
	if err := g.enter(); err != nil {
		return 0, err
	}
	defer g.mu.RUnlock()
	return g.Device.WriteAt(p, off)
}

// Trim trims through the mirror unless the gate is closed.
func (g *writeGate) Trim(off, n int64) error {
	if err := g.enter(); err != nil {
		return err
	}
	defer g.mu.RUnlock()
	return g.Device.Trim(off, n)
}

// Flush flushes through the mirror unless the gate is closed.
func (g *writeGate) Flush() error {
	if err := g.enter(); err != nil {
		return err
	}
	defer g.mu.RUnlock()
	return g.Device.Flush()
}

// Close leaves the mirror to the term: the export does not own it.
func (g *writeGate) Close() error { return nil }

// hold waits for the writes in flight and makes new ones wait until
// release.
func (g *writeGate) hold() { g.mu.Lock() }

// release lets the waiting writes go on, or fail with err if it is not nil.
func (g *writeGate) release(err error) {
	if g.err == nil {
		g.err = err
	}
	g.mu.Unlock()
}

// close fails every write from now on with err, after those in flight.
func (g *writeGate) close(err error) {
	g.hold()
	g.release(err)
}
