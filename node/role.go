package node

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ldmirror/ldmirror/cluster"
)

// followControlPlane runs one term after the other, in the role the
// control plane names, until ctx ends: a primary term while it names this
// host primary, a secondary term otherwise.
func (n *Node) followControlPlane(ctx context.Context) error {
	st, err := n.consistentState(ctx)
	if err != nil {
		return nil // stopped before the control plane answered
	}
	for ctx.Err() == nil {
		me := n.cfg.NodeID
		var err error
		role := RoleSecondary
		if st.Primary == me {
			role = RolePrimary
			epoch := st.Epoch
			n.mu.Lock()
			n.epoch = epoch
			n.mu.Unlock()
			if err = n.preparePrimary(); err == nil {
				lost, stop := n.watchRole(ctx, func(s cluster.VolumeState) bool { return !s.Holds(me, epoch) })
				err = n.runPrimary(ctx, lost)
				stop()
			}
		} else if err = n.prepareSecondary(); err == nil {
			promoted, stop := n.watchRole(ctx, func(s cluster.VolumeState) bool { return s.Primary == me })
			err = n.runSecondary(ctx, promoted)
			stop()
		}
		if err != nil && ctx.Err() == nil {
			n.log.Error("the "+role+" term failed; retrying in 1 s", "err", err)
			n.setRefused(err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
		st = n.cfg.ControlPlane.State()
	}
	return nil
}

// consistentState waits for a state the leader confirmed: at start a
// member's own copy may lag by entries it has not applied yet, and acting
// on it could start a stale primary term.
func (n *Node) consistentState(ctx context.Context) (cluster.VolumeState, error) {
	logged := false
	for {
		attempt, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := n.cfg.ControlPlane.Consistent(attempt)
		cancel()
		if err == nil {
			n.log.Info("control plane state", "primary", st.Primary, "epoch", st.Epoch)
			return st, nil
		}
		if ctx.Err() != nil {
			return st, ctx.Err()
		}
		if !logged {
			n.log.Warn("waiting for the control plane to say who is primary (no quorum yet?)", "err", err)
			logged = true
		}
	}
}

// watchRole returns a channel closed once the control plane's state
// satisfies changed, and a func that stops watching.
func (n *Node) watchRole(ctx context.Context, changed func(cluster.VolumeState) bool) (<-chan struct{}, func()) {
	ctx, cancel := context.WithCancel(ctx)
	ch := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for st := range n.cfg.ControlPlane.Watch(ctx) {
			if changed(st) {
				close(ch)
				return
			}
		}
	}()
	return ch, func() { cancel(); <-done }
}

// ErrRoleMoved reports that the control plane moved the primary role past
// the epoch a caller waited for.
var ErrRoleMoved = errors.New("the primary role moved on")

// AwaitPrimary blocks until this host serves as primary in epoch e with its
// export mounted, and returns the export file's path.
func (n *Node) AwaitPrimary(ctx context.Context, e cluster.Epoch) (string, error) {
	if n.cfg.ControlPlane == nil {
		return "", errors.New("no control plane: roles do not change")
	}
	t := time.NewTicker(fenceRetry)
	defer t.Stop()
	for {
		n.mu.Lock()
		if n.role == RolePrimary && n.epoch == e && n.export != nil {
			path := n.export.Path()
			n.mu.Unlock()
			return path, nil
		}
		next := n.termStart
		n.mu.Unlock()
		if st := n.cfg.ControlPlane.State(); st.Epoch > e {
			return "", fmt.Errorf("%w: waited for epoch %d, the control plane is at %d (primary %q)", ErrRoleMoved, e, st.Epoch, st.Primary)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-next:
		case <-t.C:
		}
	}
}

// swap runs the swap an operator asked for: through the agent if there is
// one (it stops the directory service first, and calls Swap), else Swap.
func (n *Node) swap(ctx context.Context) (cluster.Epoch, error) {
	if n.agent != nil {
		return n.agent.Swap(ctx)
	}
	return n.Swap(ctx)
}

// ErrPeerNotInSync refuses a swap toward a peer that lacks writes.
var ErrPeerNotInSync = errors.New("the peer is not in sync")

// Swap hands the primary role to the peer with no lost write: new writes
// wait, those in flight complete, both hosts flush, and only if the peer
// then holds everything does the control plane transfer the role. The
// waiting writes then fail (this host is no longer primary); if the swap
// is refused they go on. It returns the new epoch.
func (n *Node) Swap(ctx context.Context) (cluster.Epoch, error) {
	cp := n.cfg.ControlPlane
	if cp == nil {
		return 0, errors.New("swap needs a control plane (--cluster-bind)")
	}
	n.mu.Lock()
	mirror, gate, epoch := n.mirror, n.gate, n.epoch
	primary := n.role == RolePrimary && gate != nil
	n.mu.Unlock()
	if !primary {
		return 0, ErrNotPrimary
	}
	peer := n.peerID()
	if peer == "" {
		return 0, errors.New("the control plane knows no peer to hand the role to")
	}
	n.log.Info("swap: holding new writes, draining those in flight", "to", peer, "epoch", epoch)
	start := time.Now()
	gate.hold()
	handed := false
	defer func() {
		if handed {
			gate.release(ErrDemoted)
		} else {
			gate.release(nil)
		}
	}()
	if err := mirror.Drain(ctx); err != nil {
		return 0, fmt.Errorf("swap: drain the journal to the peer: %w", err)
	}
	if err := mirror.Flush(); err != nil {
		return 0, fmt.Errorf("swap: flush both hosts: %w", err)
	}
	if ms := mirror.Status(); !ms.Connected || ms.DirtyBlocks > 0 {
		return 0, fmt.Errorf("%w: connected %v, %d blocks out of sync; wait until status shows the peer uptodate", ErrPeerNotInSync, ms.Connected, ms.DirtyBlocks)
	}
	next, err := cp.TransferPrimary(ctx, n.cfg.NodeID, peer, epoch)
	if err != nil {
		return 0, fmt.Errorf("swap: %w", err)
	}
	handed = true
	n.log.Info("swap: the primary role went to the peer", "to", peer, "epoch", next, "held", time.Since(start))
	return next, nil
}
