package node

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/mirror"
	"github.com/ldmirror/ldmirror/resync"
	"github.com/ldmirror/ldmirror/transport"
)

// Retries of the primary's connection to its peer (docs/operations.md,
// "link"): a network failure (the peer down or unreachable) is retried
// after 0.1 s, doubling to at most 1 s; a peer that is up but not ready
// yet (a restarted secondary that has not read the control plane's state)
// after 0.2 s; a refusal after 5 s.
const (
	dialRetryMin  = 100 * time.Millisecond
	dialRetryMax  = time.Second
	notReadyRetry = 200 * time.Millisecond
	refusedRetry  = 5 * time.Second
)

// connectLoop keeps a session to the peer: dial with backoff, decide the
// resync direction from both hosts' generations, resync what went out of
// sync, replicate until the session breaks, repeat.
func (n *Node) connectLoop(ctx context.Context, mr *mirror.Mirror) {
	backoff := dialRetryMin
	for ctx.Err() == nil {
		s, err := transport.Dial(ctx, n.cfg.Peer, n.dialConfig())
		if err == nil {
			err = n.admit(s, mr)
		}
		if err == nil {
			err = n.protectPeer(ctx, s, mr)
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			n.log.Debug("connect to peer failed", "peer", n.cfg.Peer, "err", err)
			wait := backoff
			switch {
			case errors.Is(err, transport.ErrAuth) || errors.Is(err, transport.ErrIdentity) || errors.Is(err, transport.ErrVolumeMismatch) || errors.Is(err, ErrPeerNotAdmitted):
				// A certificate refused, another host, another volume, a
				// split brain: retrying alone does not fix these.
				n.log.Error("peer refused: the operator must act; retrying", "peer", n.cfg.Peer, "err", err)
				n.setRefused(err)
				wait = refusedRetry
			case errors.Is(err, transport.ErrNotReady):
				// The peer is up and will decide in a moment.
				if n.setRefused(err) {
					n.log.Info("peer not ready yet; retrying in 0.2 s", "peer", n.cfg.Peer, "err", err)
				}
				wait, backoff = notReadyRetry, dialRetryMin
			case errors.Is(err, transport.ErrPeerRefused):
				// Mostly an epoch the peer does not admit: this host was
				// deposed (its role loop steps down) or the peer's copy of
				// the control plane lags; either clears by itself. The
				// peer's own status names a refusal the operator must fix.
				n.log.Warn("peer refused the connection; retrying", "peer", n.cfg.Peer, "err", err)
				n.setRefused(err)
				wait = refusedRetry
			default:
				backoff = min(2*backoff, dialRetryMax)
			}
			select {
			case <-time.After(wait):
			case <-ctx.Done():
				return
			}
			continue
		}
		backoff = dialRetryMin
		n.setRefused(nil)
		n.setPeerGenerations(resync.Unpack(s.Peer().Generations))
		n.setLink(LinkConnected, s.Peer().NodeID)
		n.setSecurity(s.Security())
		n.log.Info("peer connected", append([]any{"peer", n.cfg.Peer, "node", s.Peer().NodeID}, s.SecurityAttrs()...)...)
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
		return fmt.Errorf("%w: %w", ErrPeerNotAdmitted, n.splitBrain(s.Peer().NodeID, local, peer))
	case err != nil:
		s.Close()
		return fmt.Errorf("%w: %w (generations local %v, peer %v)", ErrPeerNotAdmitted, err, local, peer)
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
	stopReport := n.reportProgress(s, mr)
	err = n.catchUpRetrying(ctx, s, mr, plan.Checksum)
	stopReport()
	if err != nil {
		if ctx.Err() == nil {
			n.log.Warn("resync stopped", "err", err)
		}
		if errors.Is(err, mirror.ErrStageRefused) {
			n.refuseStage(ctx, s, err)
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
// the control plane has no quorum to record the peer as its target first.
func (n *Node) catchUpRetrying(ctx context.Context, s *transport.Session, mr *mirror.Mirror, checksum bool) error {
	for warned := false; ; {
		err := mr.CatchUp(ctx, checksum)
		if err == nil || !errors.Is(err, mirror.ErrTargetNotMarked) || !errors.Is(err, cluster.ErrNoQuorum) {
			return err
		}
		if !warned {
			n.log.Warn("resync waits: the control plane must record the peer as its target first (no quorum); retrying", "err", err)
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
