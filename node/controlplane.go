package node

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/internal/failpoint"
	"github.com/ldmirror/ldmirror/mirror"
	"github.com/ldmirror/ldmirror/transport"
)

// ControlPlane is what a host needs of the raft control plane
// (*cluster.Cluster): who is primary in which epoch, the commits that fence
// a lost peer and record a caught-up one, the hand-over of a swap, and the
// failover away from a host whose disk failed.
type ControlPlane interface {
	State() cluster.VolumeState
	Consistent(ctx context.Context) (cluster.VolumeState, error)
	Watch(ctx context.Context) <-chan cluster.VolumeState
	MarkPeerOutdated(ctx context.Context, epoch cluster.Epoch, peer string) error
	SetDiskState(ctx context.Context, node string, d cluster.DiskState, epoch cluster.Epoch) error
	TransferPrimary(ctx context.Context, from, to string, epoch cluster.Epoch) (cluster.Epoch, error)
	Failover(ctx context.Context, failed string, epoch cluster.Epoch) (string, cluster.Epoch, error)
	Leader() (id, addr string)
}

// fenceRetry is how often a primary without quorum retries marking its peer
// outdated while its writes are suspended.
const fenceRetry = 250 * time.Millisecond

// fenceAttempt bounds one try to mark the peer outdated, so that a primary
// without quorum says that its writes are suspended.
const fenceAttempt = time.Second

// peerID is the other data host's node ID according to the control plane
// ("" without one).
func (n *Node) peerID() string {
	if n.cfg.ControlPlane == nil {
		return ""
	}
	for _, id := range n.cfg.ControlPlane.State().DataHosts() {
		if id != n.cfg.NodeID {
			return id
		}
	}
	return ""
}

// fencePeer commits "peer outdated" for epoch, retrying while there is no
// quorum: until then the writes that need it stay suspended. A refusal other
// than no quorum means this host lost the primary role.
func (n *Node) fencePeer(epoch cluster.Epoch) func(context.Context) error {
	return func(ctx context.Context) error {
		peer := n.peerID()
		if peer == "" {
			return errors.New("the control plane knows no peer to mark outdated")
		}
		warned := false
		for {
			// A bounded attempt: without quorum the call would wait for
			// one as long as ctx lives, and the warning below never come.
			attempt, cancel := context.WithTimeout(ctx, fenceAttempt)
			err := n.cfg.ControlPlane.MarkPeerOutdated(attempt, epoch, peer)
			cancel()
			switch {
			case err == nil:
				failpoint.Crash("node-fenced-before-generation")
				// From here on this host writes what the peer lacks: a
				// new generation, durably, before any such write is
				// acknowledged.
				if err := n.startTracking(); err != nil {
					return fmt.Errorf("start a new generation: %w", err)
				}
				n.log.Warn("peer marked outdated: writes continue on this host alone", "peer", peer, "epoch", epoch)
				return nil
			case errors.Is(err, cluster.ErrStaleEpoch), errors.Is(err, cluster.ErrNotPrimary), errors.Is(err, cluster.ErrUnknownNode):
				n.log.Error("the control plane refused to mark the peer outdated: this host no longer writes", "epoch", epoch, "err", err)
				return err
			case ctx.Err() != nil:
				return ctx.Err()
			}
			if !warned {
				n.log.Warn("writes suspended: cannot mark the peer outdated without quorum; retrying", "peer", peer, "err", err)
				warned = true
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(fenceRetry):
			}
		}
	}
}

// admitNamedPrimary lets only the primary of the current epoch replicate
// here. A peer that presents a later epoch than this host's copy of the
// control plane knows is told to come back in a moment: the copy lags.
func (n *Node) admitNamedPrimary(peer transport.Hello) error {
	st := n.controlState()
	switch {
	case peer.NodeID != st.Primary && cluster.Epoch(peer.Epoch) > st.Epoch:
		return fmt.Errorf("%w: %s presents epoch %d, this host's copy of the control plane is at epoch %d and names %q", transport.ErrNotReady, peer.NodeID, peer.Epoch, st.Epoch, st.Primary)
	case peer.NodeID != st.Primary:
		return fmt.Errorf("%w: %s is not the primary (the control plane names %q in epoch %d)", transport.ErrStaleEpoch, peer.NodeID, st.Primary, st.Epoch)
	case cluster.Epoch(peer.Epoch) < st.Epoch:
		return fmt.Errorf("%w: primary %s has epoch %d, the control plane is at %d", transport.ErrStaleEpoch, peer.NodeID, peer.Epoch, st.Epoch)
	}
	return nil
}

// recordPeerInSync records with the control plane that the peer holds every
// write: after a resync, or when the first connection finds both hosts in
// sync. The mirror makes the commit only while a session is live and
// nothing is out of sync, under its fence lock (see blockdev.CommitInSync);
// first, under the same lock, it runs before (the generation hand-off),
// whose error it returns. Without quorum it retries until ctx ends or the
// peer is lost. Without a control plane it runs before only.
func (n *Node) recordPeerInSync(ctx context.Context, mr *mirror.Mirror, peer string, before func() error) error {
	epoch := cluster.Epoch(n.tcfg.Epoch)
	commit := func(ctx context.Context) error {
		if err := before(); err != nil {
			return err
		}
		if n.cfg.ControlPlane == nil {
			return nil
		}
		attempt, cancel := context.WithTimeout(ctx, fenceAttempt)
		defer cancel()
		return n.cfg.ControlPlane.SetDiskState(attempt, peer, cluster.DiskUpToDate, epoch)
	}
	for warned := false; ; {
		err := mr.CommitInSync(ctx, commit)
		switch {
		case err == nil:
			if n.cfg.ControlPlane != nil {
				n.log.Info("peer recorded uptodate with the control plane", "peer", peer, "epoch", epoch)
			}
			return nil
		case errors.Is(err, errGenerationMoved):
			return err
		case !errors.Is(err, cluster.ErrNoQuorum) || ctx.Err() != nil:
			n.log.Warn("could not record the peer as up to date", "peer", peer, "err", err)
			return err
		case !warned:
			n.log.Warn("the peer is in sync but the control plane cannot record it yet (no quorum); retrying", "peer", peer)
			warned = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(fenceRetry):
		}
	}
}

// markResyncTarget is the commit a resync in epoch makes before its first
// block: unprotected, the peer holds a mix of old and new blocks until it
// completes, and the control plane must not let it be promoted
// (inconsistent); staged, it keeps its data as of its disconnect and lacks
// what the resync brings (outdated: promoted only by force).
func (n *Node) markResyncTarget(epoch cluster.Epoch) mirror.ResyncStart {
	return func(ctx context.Context, staged bool) error {
		peer := n.peerID()
		if peer == "" {
			return errors.New("the control plane knows no peer to mark as a resync's target")
		}
		d := cluster.DiskInconsistent
		if staged {
			d = cluster.DiskOutdated
		}
		attempt, cancel := context.WithTimeout(ctx, fenceAttempt)
		defer cancel()
		if err := n.cfg.ControlPlane.SetDiskState(attempt, peer, d, epoch); err != nil {
			return err
		}
		n.log.Info("peer recorded as the resync's target until it completes", "peer", peer, "disk", d, "epoch", epoch)
		return nil
	}
}

// dropStalePrimary ends the replication session of a primary that the
// control plane no longer names, or names in a later epoch, until ctx ends.
// It acts on each state change as the control plane applies it, so a stale
// primary's frames stop at once rather than at the next poll; the poll
// catches a session admitted just before a change it did not see.
func (n *Node) dropStalePrimary(ctx context.Context, ln *transport.Listener) {
	t := time.NewTicker(fenceRetry)
	defer t.Stop()
	changes := n.watchControl(ctx)
	for {
		select {
		case _, ok := <-changes:
			if !ok {
				return
			}
		case <-t.C:
		}
		s := ln.Active()
		if s == nil {
			continue
		}
		if err := n.admitNamedPrimary(s.Peer()); err != nil {
			n.log.Warn("dropping the replication session of a stale primary", "err", err)
			s.Close(err)
		}
	}
}
