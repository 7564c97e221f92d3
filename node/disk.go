package node

import (
	"context"
	"fmt"
	"time"

	"github.com/ldmirror/ldmirror/blockdev"
	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/mirror"
	"github.com/ldmirror/ldmirror/replica"
	"github.com/ldmirror/ldmirror/transport"
	"github.com/ldmirror/ldmirror/volume"
)

// A failing disk (docs/operations.md, "A failing disk"): after the first
// I/O error of its disk a host stops using it, as DRBD's on-io-error
// detach does, instead of retrying it in a loop. A secondary refuses the
// primary until an operator attaches the repaired disk; the primary goes
// on alone and resyncs it then. A primary fails every write from the
// failed one on and, with a control plane, hands the role to an uptodate
// peer. The failure is recorded in meta.json, so that a restart does not
// take the disk back unasked.

// diskFailure is the refusal of a host whose disk failed, with what to do,
// or nil.
func (n *Node) diskFailure() error {
	n.mu.Lock()
	failed := n.meta.DiskFailed
	n.mu.Unlock()
	if failed == "" {
		return nil
	}
	return fmt.Errorf("%w on %s: %s; repair it, then run `ldmirror attach-disk --dir %s`",
		blockdev.ErrDiskFailed, n.cfg.NodeID, failed, n.cfg.Dir)
}

// recordDiskFailure records err, the disk's failure, in meta.json. The
// metadata may live on the failed disk: if it cannot be saved, the failure
// holds until the daemon stops.
func (n *Node) recordDiskFailure(err error) {
	n.mu.Lock()
	n.meta.DiskFailed = fmt.Sprintf("%s at %s", err, time.Now().UTC().Format(time.RFC3339))
	serr := volume.Save(n.cfg.Dir, n.meta)
	n.mu.Unlock()
	if serr != nil {
		n.log.Error("could not record the disk failure in the volume's metadata: a restart would use the disk again", "err", serr)
	}
}

// watchSecondaryDisk ends the primary's session each time this secondary's
// disk fails: the primary's writes then go on alone, and its reconnects
// are refused (admitPrimary) instead of resyncing into the failing disk.
// After attach-disk it watches the disk put back.
func (n *Node) watchSecondaryDisk(ctx context.Context, ln *transport.Listener, r *replica.Replica) {
	for {
		failed, replaced := r.DiskWatch()
		select {
		case <-ctx.Done():
			return
		case <-replaced:
			continue
		case <-failed:
		}
		n.recordDiskFailure(r.DiskError())
		err := n.diskFailure()
		n.log.Error("this host's disk failed: the primary goes on alone until the disk is attached again", "err", err)
		if s := ln.Active(); s != nil {
			s.Close(err)
		}
		select {
		case <-ctx.Done():
			return
		case <-replaced:
		}
	}
}

// watchPrimaryDisk hands the role over once the primary's disk fails: with
// a control plane, to the peer if it is uptodate (Failover refuses
// otherwise), after an async journal drained to it. Without one, or if
// the hand-over is refused, every write fails until an operator acts.
func (n *Node) watchPrimaryDisk(ctx context.Context, mr *mirror.Mirror) {
	select {
	case <-ctx.Done():
		return
	case <-mr.DiskFailed():
	}
	n.recordDiskFailure(mr.DiskError())
	err := n.diskFailure()
	cp := n.cfg.ControlPlane
	if cp == nil {
		n.log.Error("this host's disk failed: every write fails; no control plane to hand the role to", "err", err)
		return
	}
	n.log.Error("this host's disk failed: every write fails; handing the primary role to the peer", "err", err)
	n.mu.Lock()
	epoch := n.epoch
	n.mu.Unlock()
	drain, cancel := context.WithTimeout(ctx, 2*n.cfg.Timeout)
	derr := mr.Drain(drain) // async: the peer must hold every acknowledged write
	cancel()
	if derr != nil {
		n.log.Error("no hand-over: the peer does not hold every acknowledged write; writes fail until an operator acts", "err", derr)
		return
	}
	to, next, ferr := cp.Failover(ctx, n.cfg.NodeID, epoch)
	if ferr != nil {
		n.log.Error("no hand-over: the control plane refused it; writes fail until an operator acts", "err", ferr)
		return
	}
	n.log.Warn("the primary role went to the peer after this host's disk failed", "to", to, "epoch", next)
}

// AttachDisk takes the disk back after the operator repaired it: the
// backing file must open at the volume's size, read and flush. full marks
// every block as possibly different, so that the primary resyncs the whole
// volume (a disk that was replaced, not repaired); otherwise the primary
// resyncs the blocks it tracked while the disk was out. It works on a
// secondary, and on a host that serves no term; a primary whose disk
// failed hands the role over first.
func (n *Node) AttachDisk(ctx context.Context, full bool) error {
	if n.diskFailure() == nil {
		return fmt.Errorf("%w on %s: nothing to attach", volume.ErrDiskNotFailed, n.cfg.NodeID)
	}
	n.mu.Lock()
	role, r := n.role, n.replica
	n.mu.Unlock()
	if role == cluster.RolePrimary {
		return fmt.Errorf("%w: this host is primary; attach-disk works on a secondary (with a control plane the role moves to the peer; without one, stop the daemon and run attach-disk without it)", cluster.ErrNotPrimary)
	}
	dev, err := volume.CheckDisk(n.cfg.Dir, n.meta.Size)
	if err != nil {
		return err
	}
	if full {
		all, err := n.allBehind()
		if err != nil {
			dev.Close()
			return err
		}
		n.mu.Lock()
		n.behind = all
		n.mu.Unlock()
	}
	n.mu.Lock()
	old := n.dev
	n.dev = dev
	n.meta.DiskFailed = ""
	err = volume.Save(n.cfg.Dir, n.meta)
	n.mu.Unlock()
	n.stage.SetBase(dev)
	if r != nil {
		r.Reattach(n.stage)
	}
	old.Close()
	if err != nil {
		return err
	}
	n.setRefused(nil)
	n.log.Info("disk attached again: the primary resyncs it when it reconnects", "full", full)
	return nil
}
