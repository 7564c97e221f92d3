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
	"github.com/ldmirror/ldmirror/journal"
	"github.com/ldmirror/ldmirror/resync"
	"github.com/ldmirror/ldmirror/scoreboard"
	"github.com/ldmirror/ldmirror/transport"
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
	var mirror *blockdev.Mirror
	if n.cfg.Passthrough {
		mirror = blockdev.NewMirror(local, dirty, nil, n.log)
	} else {
		if err := n.startPrimary(); err != nil {
			return err
		}
		var intent blockdev.WriteIntent = n.sb
		if n.cfg.NoActivityLog {
			intent = outOfSyncOnly{n.sb}
			n.log.Warn("activity log off: after a crash of this primary, blocks written just before it may differ on the peer without being resynced")
		}
		mirror = blockdev.NewMirror(local, dirty, intent, n.log)
		mirror.SetResyncRate(n.cfg.ResyncRate)
		mirror.SetResyncMinRate(n.cfg.ResyncMinRate)
		if n.cfg.Mode == blockdev.ModeAsync {
			if err := n.startAsync(mirror); err != nil {
				return errors.Join(err, n.stopPrimary())
			}
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.role, n.mirror, n.gate = RolePrimary, mirror, &writeGate{Device: mirror}
	n.link = LinkStandalone
	if n.cfg.Peer != "" {
		n.link = LinkConnecting
	}
	return nil
}

// startAsync opens a new journal for this primary term and puts the
// mirror in async mode. A term's journal is its own: records of an earlier
// term here must never be replayed to a peer that was primary since, so
// only the sequence numbering carries over (from the old journal, or from
// what this host applied as secondary).
func (n *Node) startAsync(mirror *blockdev.Mirror) error {
	path := filepath.Join(n.cfg.Dir, JournalFile)
	first := uint64(1)
	if old, err := journal.Open(path); err == nil {
		first = old.Next()
		old.Close()
	} else if !errors.Is(err, os.ErrNotExist) {
		n.log.Warn("the old journal cannot be read; starting a new one (its writes are in the scoreboard)", "err", err)
	}
	if af, err := journal.OpenAppliedFile(filepath.Join(n.cfg.Dir, AppliedFile)); err == nil {
		first = max(first, af.Position().Seq+1)
		af.Close()
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("replace the journal: %w", err)
	}
	j, err := journal.Create(path, journal.Options{Capacity: n.cfg.JournalSize, FirstSeq: first})
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	err = mirror.SetAsync(blockdev.AsyncConfig{Journal: j, OnFull: n.cfg.OnFull, Resynced: func(ctx context.Context) {
		if peer := n.peerID(); peer != "" {
			n.recordPeerInSync(ctx, mirror, peer)
		}
	}})
	if err != nil {
		j.Close()
		return err
	}
	n.log.Info("async mode: writes return once in the journal", "journal", path, "capacity", j.Capacity(), "first_seq", first, "on_full", n.cfg.OnFull)
	return nil
}

// keepOpen is the backing file as a term's mirror sees it: closing the
// mirror flushes the file but leaves it open for the next term.
type keepOpen struct{ blockdev.Device }

func (keepOpen) Close() error { return nil }

// startPrimary opens the scoreboard and records that this host now writes
// as primary. The blocks the peer may miss are the scoreboard's out-of-sync
// map and, after a crash, every block of the activity log's hot extents.
func (n *Node) startPrimary() error {
	m := &n.meta
	sb, created, err := n.openScoreboard()
	if err != nil {
		return err
	}
	if m.Generations.Discarded() {
		sb.Close()
		return errors.New("this host discarded its data (ldmirror resolve): run it as secondary until the peer resynced it")
	}
	behind := m.PrimaryActive || m.Generations.Bitmap != 0
	n.mu.Lock()
	n.sb = sb
	n.mu.Unlock()
	switch {
	case created && behind:
		// A volume from before the scoreboard existed: what the peer misses
		// is not known.
		if err := n.markAllOutOfSync(); err != nil {
			sb.Close()
			return err
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
	if err := writeMeta(n.cfg.Dir, *m); err != nil {
		sb.Close()
		return err
	}
	return nil
}

// openScoreboard opens the volume's scoreboard, creating it if there is none.
func (n *Node) openScoreboard() (sb *scoreboard.Scoreboard, created bool, err error) {
	geom := scoreboard.Geometry{VolumeSize: n.meta.Size, BlockSize: n.meta.BlockSize}
	path := filepath.Join(n.cfg.Dir, ScoreboardFile)
	sb, err = scoreboard.Open(path, geom, scoreboard.Options{})
	if errors.Is(err, os.ErrNotExist) {
		sb, err = scoreboard.Create(path, geom, scoreboard.Options{})
		created = true
	}
	return sb, created, err
}

// markAllOutOfSync marks every block for a full resync, in memory and
// durably, so a crash before the resync ends does not shrink it.
func (n *Node) markAllOutOfSync() error {
	n.dirty.MarkAllOutOfSync()
	return n.markOutOfSync(n.dirty.OutOfSync())
}

// markOutOfSync adds blocks to the resync, in memory and durably.
func (n *Node) markOutOfSync(blocks *roaring.Bitmap) error {
	n.dirty.MarkOutOfSync(blocks)
	n.sb.MarkOutOfSync(blocks)
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
	return writeMeta(n.cfg.Dir, n.meta)
}

// runPrimary serves the volume as primary until ctx ends or, with a control
// plane, until lost is closed: then it stops taking writes, waits for the
// export to be released and returns, ready for a secondary term.
func (n *Node) runPrimary(ctx context.Context, lost <-chan struct{}) error {
	n.mu.Lock()
	mirror, gate := n.mirror, n.gate
	n.mu.Unlock()
	if n.cfg.ControlPlane != nil && !n.cfg.Passthrough {
		n.tcfg.Epoch = uint64(n.epoch)
		mirror.SetFence(n.fencePeer(n.epoch))
		mirror.SetResyncStart(n.markPeerInconsistent(n.epoch))
	}
	var dev blockdev.Device = gate
	if n.cfg.Passthrough {
		dev = keepOpen{n.dev}
		n.log.Warn("passthrough mode: no mirroring, no dirty tracking (benchmark baseline only)")
	}
	export, err := blockdev.Mount(dev, n.cfg.MountDir, n.log)
	if err != nil {
		return errors.Join(err, n.endPrimary(mirror))
	}
	n.mu.Lock()
	n.export = export
	close(n.termStart)
	n.termStart = make(chan struct{})
	n.mu.Unlock()
	n.log.Info("primary ready", "export", export.Path(), "peer", n.cfg.Peer, "epoch", n.epoch, "volume", n.meta.VolumeUUID, "size", n.meta.Size)

	linkCtx, stopLink := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	if n.cfg.Peer != "" {
		wg.Add(1)
		go func() { defer wg.Done(); n.connectLoop(linkCtx, mirror) }()
	}
	released := false
	select {
	case <-ctx.Done():
		n.log.Info("shutting down: completing writes in flight")
	case <-lost:
		n.log.Warn("this host lost the primary role: refusing writes, waiting for the export to be released", "epoch", n.epoch)
		gate.close(ErrDemoted) // waits for writes in flight
		released = n.releaseExport(ctx, export)
	}
	// Close the mirror first: it waits for in-flight writes to be acked (or
	// fail) while the link is still up, then flushes.
	closeErr := mirror.Close()
	stopLink()
	wg.Wait()
	if !n.cfg.Passthrough && closeErr == nil {
		closeErr = n.stopPrimary()
	}
	var unmountErr error
	if !released {
		if devs := blockdev.LoopDevicesOf(export.Path()); len(devs) > 0 {
			n.log.Warn("loop devices still attached to the export; detaching the mount lazily", "devices", devs)
		}
		unmountErr = export.UnmountLazy()
	}
	n.endTerm()
	return errors.Join(closeErr, unmountErr)
}

// endPrimary undoes preparePrimary for a term that did not start.
func (n *Node) endPrimary(mirror *blockdev.Mirror) error {
	err := mirror.Close()
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
func (n *Node) releaseExport(ctx context.Context, export *blockdev.Export) bool {
	t := time.NewTicker(fenceRetry)
	defer t.Stop()
	for {
		var waiting string
		if devs := blockdev.LoopDevicesOf(export.Path()); len(devs) > 0 {
			waiting = "loop device " + strings.Join(devs, ", ") + " to be detached (stop the directory server, umount, ldmirror detach)"
		} else if err := export.Unmount(); err != nil {
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
func (n *Node) connectLoop(ctx context.Context, mirror *blockdev.Mirror) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		s, err := transport.Dial(ctx, n.cfg.Peer, n.dialConfig())
		if err == nil {
			err = n.admit(s)
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			n.log.Debug("connect to peer failed", "peer", n.cfg.Peer, "err", err)
			switch {
			case errors.Is(err, transport.ErrAuth) || errors.Is(err, transport.ErrIdentity) || errors.Is(err, transport.ErrVolumeMismatch) || errors.Is(err, ErrPeerRefused):
				// A certificate refused, another host, another volume, a
				// split brain: retrying alone does not fix these.
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
		n.setLink(LinkConnected, s.Peer().NodeID)
		n.setSecurity(s.Security())
		n.log.Info("peer connected", append([]any{"peer", n.cfg.Peer, "node", s.Peer().NodeID}, s.SecurityAttrs()...)...)
		mirror.SetPeer(s)
		n.catchUp(ctx, s, mirror)
		select {
		case <-s.Done():
			n.log.Warn("peer link lost", "peer", n.cfg.Peer, "err", s.Err())
		case <-ctx.Done():
		}
		s.Close()
		mirror.SetPeer(nil)
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
// peer up to date, and closes the session if not.
func (n *Node) admit(s *transport.Session) error {
	local, peer := n.generations(), resync.Unpack(s.Peer().Generations)
	switch d := resync.Decide(local, peer); d {
	case resync.InSync, resync.LocalSource:
		return nil
	case resync.LocalSourceFull:
		n.log.Warn("the peer is older than the changes tracked here: resyncing the whole volume", "local", local, "peer", peer)
		if err := n.markAllOutOfSync(); err != nil {
			s.Close()
			return err
		}
		return nil
	case resync.SplitBrain:
		s.Close()
		return fmt.Errorf("%w: %w", ErrPeerRefused, n.splitBrain(s.Peer().NodeID, local, peer))
	default:
		s.Close()
		return fmt.Errorf("%w: %v (generations local %v, peer %v)", ErrPeerRefused, d, local, peer)
	}
}

// addPeerBehind adds to the resync the blocks the peer knows may differ
// (what it wrote as primary and this host may lack) and reports whether
// there were any.
func (n *Node) addPeerBehind(s *transport.Session) (bool, error) {
	call, err := s.SubmitOutOfSync()
	if err != nil {
		return false, err
	}
	body, err := call.WaitReply()
	if err != nil {
		if errors.Is(err, transport.ErrRemoteIO) && strings.Contains(err.Error(), errBehindTooLarge.Error()) {
			n.log.Warn("the peer's out-of-sync set is too large to send: resyncing the whole volume, comparing checksums")
			return true, n.markAllOutOfSync()
		}
		return false, fmt.Errorf("ask the peer for its out-of-sync blocks: %w", err)
	}
	b := roaring.New()
	if err := b.UnmarshalBinary(body); err != nil {
		return false, fmt.Errorf("the peer's out-of-sync blocks: %w", err)
	}
	if b.IsEmpty() {
		return false, nil
	}
	if blocks := n.dirty.Blocks(); uint64(b.Maximum()) >= blocks {
		return false, fmt.Errorf("the peer's out-of-sync blocks go up to block %d, the volume has %d", b.Maximum(), blocks)
	}
	n.log.Info("the peer wrote blocks as primary that may differ here: adding them to the resync", "blocks", b.GetCardinality())
	return true, n.markOutOfSync(b)
}

// catchUp copies the out-of-sync blocks to the peer and, once it holds
// everything durably, tells it to adopt this host's generation.
func (n *Node) catchUp(ctx context.Context, s *transport.Session, mirror *blockdev.Mirror) {
	n.resyncMu.Lock()
	defer n.resyncMu.Unlock()
	peerBehind, err := n.addPeerBehind(s)
	if err != nil {
		n.log.Warn("resync not started", "err", err)
		s.Close()
		return
	}
	if err := n.catchUpRetrying(ctx, s, mirror, n.crashed || peerBehind || n.cfg.ResyncChecksum); err != nil {
		if ctx.Err() == nil {
			n.log.Warn("resync stopped", "err", err)
		}
		return
	}
	n.crashed = false
	local, peer := n.generations(), resync.Unpack(s.Peer().Generations)
	if !n.dirty.OutOfSync().IsEmpty() {
		return // a write failed to ship meanwhile: the session broke
	}
	if local.Bitmap == 0 && local == peer && !peerBehind {
		n.recordPeerInSync(ctx, mirror, s.Peer().NodeID) // in sync from the start
		return
	}
	if err := mirror.Drain(ctx); err != nil { // async: the peer holds the journal
		n.log.Warn("could not drain the journal to the peer after the resync", "err", err)
		return
	}
	if err := mirror.Flush(); err != nil {
		n.log.Warn("flush after resync failed", "err", err)
		return
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
		n.log.Warn("could not record that the peer caught up", "err", err)
		return
	}
	n.recordPeerInSync(ctx, mirror, s.Peer().NodeID)
}

// catchUpRetrying runs mirror.CatchUp, again while it cannot start because
// the control plane has no quorum to record the peer inconsistent first.
func (n *Node) catchUpRetrying(ctx context.Context, s *transport.Session, mirror *blockdev.Mirror, checksum bool) error {
	for warned := false; ; {
		err := mirror.CatchUp(ctx, checksum)
		if err == nil || !errors.Is(err, blockdev.ErrTargetNotMarked) || !errors.Is(err, cluster.ErrNoQuorum) {
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
func (n *Node) primaryParts() (*blockdev.Mirror, *bitmap.Set, error) {
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
	mirror, dirty, err := n.primaryParts()
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
	if err := mirror.Drain(ctx); err != nil { // async: records in flight would look different
		return res, fmt.Errorf("verify: %w", err)
	}
	differ, err := mirror.Verify(ctx, func(done, total uint64) {
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
		err = mirror.Resync(ctx, false) // verify just found them different
		n.resyncMu.Unlock()
		res.Repaired = err == nil
		if err == nil {
			n.recordPeerInSync(ctx, mirror, n.peerID())
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
	mirror, dirty, err := n.primaryParts()
	if err != nil {
		return res, err
	}
	if !mirror.Status().Connected {
		return res, fmt.Errorf("resync: %w", transport.ErrDisconnected)
	}
	n.resyncMu.Lock()
	defer n.resyncMu.Unlock()
	if full {
		if err := n.markAllOutOfSync(); err != nil {
			return res, err
		}
	}
	start := time.Now()
	skipped := mirror.Status().ResyncSkip
	res.Blocks = dirty.OutOfSync().GetCardinality()
	err = mirror.Resync(ctx, checksum)
	if err == nil {
		n.recordPeerInSync(ctx, mirror, n.peerID())
	}
	res.Skipped = mirror.Status().ResyncSkip - skipped
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
