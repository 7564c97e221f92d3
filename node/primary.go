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
	"github.com/ldmirror/ldmirror/mirror"
	"github.com/ldmirror/ldmirror/scoreboard"
	"github.com/ldmirror/ldmirror/volume"
)

// preparePrimary sets up a primary term: the dirty set, the scoreboard and
// the mirror over the backing file.
func (n *Node) preparePrimary() error {
	if err := n.diskFailure(); err != nil {
		return err
	}
	if err := n.resolveStage(); err != nil {
		return err
	}
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
	cfg := mirror.Config{Dirty: dirty, Log: n.log, StagePeer: true}
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
		cfg.ResyncRate, cfg.ResyncMinRate = n.resyncRates()
		if n.cfg.ControlPlane != nil {
			n.tcfg.Epoch = uint64(n.epoch)
			cfg.Fence, cfg.ResyncStart = n.fencePeer(n.epoch), n.markResyncTarget(n.epoch)
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
	n.role, n.mirror, n.gate = cluster.RolePrimary, mr, &writeGate{Device: mr, observer: n.cfg.Observer}
	n.link = LinkStandalone
	if n.cfg.Peer != "" {
		n.link = LinkConnecting
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
	wg.Add(1)
	go func() { defer wg.Done(); n.watchPrimaryDisk(linkCtx, mr) }()
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

// ErrPeerNotAdmitted reports a peer this primary will not replicate to: its
// data is newer, diverged (split brain), or unrelated.
var ErrPeerNotAdmitted = errors.New("peer not admitted")

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
