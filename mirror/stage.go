package mirror

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ldmirror/ldmirror/transport"
)

// A resync target that stays usable (docs/design.md): with
// Config.StagePeer the Mirror asks its peer to stage a bitmap resync
// (package stage) before the first block the peer would otherwise apply
// out of write order reaches it, and to commit the staged blocks once the
// peer holds everything the resync and the writes since sent. Until then
// the peer's volume keeps its data as of its disconnect.

// ErrStageRefused reports a resync the peer refused to stage (it has no
// room for it): the resync does not start.
var ErrStageRefused = errors.New("the resync target refused the resync")

// peerStage is what the current session's peer said of its staging area.
type peerStage struct {
	s     *transport.Session
	reply transport.StageReply
}

// ProtectPeer asks the peer of s to stage what follows (begin: about the
// out-of-sync bytes; the peer goes on with a resync it staged already), or
// only what it stages now, and returns its answer. A committed resync the
// peer still applies is waited for first. It fails with ErrStageRefused
// when the peer refuses; a peer that takes the resync unprotected
// (transport.StageUnprotected) is no error. Without Config.StagePeer it
// does nothing.
func (m *Mirror) ProtectPeer(ctx context.Context, s *transport.Session, begin bool) (transport.StageReply, error) {
	if !m.stagePeer {
		return transport.StageReply{}, nil
	}
	op, need := transport.StageStatus, int64(0)
	if begin {
		op, need = transport.StageBegin, int64(m.dirty.OutOfSync().GetCardinality())*int64(m.dirty.BlockSize())
	}
	r, err := m.stageOp(s, op, need)
	if err == nil && r.State == transport.StageApplying {
		if err = m.waitPeerApplied(ctx, s); err == nil {
			return m.ProtectPeer(ctx, s, begin)
		}
	}
	if err != nil {
		return r, err
	}
	prev := m.PeerStage(s)
	m.setPeerStage(s, r)
	switch r.State {
	case transport.StageRefused:
		return r, fmt.Errorf("%w: %s", ErrStageRefused, r.Reason)
	case transport.StageUnprotected:
		if prev.State != r.State {
			m.log.Warn("the peer takes the resync unprotected: it is inconsistent until the resync completes", "reason", r.Reason)
		}
	case transport.StageStaging:
		if prev.State != r.State {
			m.log.Info("the peer stages the resync: it stays consistent as of the time below until the resync completes",
				"as_of", r.AsOf, "staged_bytes", r.Staged)
		}
	}
	return r, nil
}

// stageOp runs one Stage request on s; a failure of the link is a loss of
// the peer.
func (m *Mirror) stageOp(s *transport.Session, op transport.StageOp, need int64) (transport.StageReply, error) {
	r, err := transport.Stage(s, op, need)
	if err != nil && !errors.Is(err, transport.ErrMalformed) {
		m.peerLost(s, err)
	}
	if err != nil {
		return r, fmt.Errorf("stage %s on the peer: %w", op, err)
	}
	return r, nil
}

// PeerStage is what the peer of s last said of its staging area (the
// zero reply if it was not asked in this session).
func (m *Mirror) PeerStage(s *transport.Session) transport.StageReply {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stage.s != s || s == nil {
		return transport.StageReply{}
	}
	return m.stage.reply
}

func (m *Mirror) setPeerStage(s *transport.Session, r transport.StageReply) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stage = peerStage{s: s, reply: r}
}

// peerStaging reports whether the peer of s stages the resync.
func (m *Mirror) peerStaging(s *transport.Session) bool {
	return m.PeerStage(s).State == transport.StageStaging
}

// commitPeer, once a resync completed, makes the peer commit what it
// staged: in async mode after the peer acknowledged every write journaled
// until now, so that it commits a state the primary was in (every write
// older than the last copy). The commit makes the staged blocks the
// peer's data, durably; the peer copies them into its volume afterwards,
// in the background (its reads and the writes that follow see the staged
// blocks meanwhile), so the resync does not wait for that copy. A resync
// that starts while the peer still copies waits for it (ProtectPeer).
func (m *Mirror) commitPeer(ctx context.Context, s *transport.Session) error {
	if !m.peerStaging(s) {
		return nil
	}
	if err := m.rep.drain(ctx); err != nil {
		return fmt.Errorf("commit the peer's staged resync: %w", err)
	}
	start := time.Now()
	r, err := m.stageOp(s, transport.StageCommit, 0)
	if err != nil {
		return fmt.Errorf("commit the peer's staged resync: %w", err)
	}
	m.setPeerStage(s, r)
	m.log.Info("the peer committed the staged resync; it applies it to its volume in the background", "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// waitPeerApplied waits until the peer of s applied a committed resync.
// The peer holds each status reply while it applies, for a fraction of
// the link's timeout.
func (m *Mirror) waitPeerApplied(ctx context.Context, s *transport.Session) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		r, err := m.stageOp(s, transport.StageStatus, 0)
		if err != nil {
			return err
		}
		m.setPeerStage(s, r)
		switch {
		case r.State != transport.StageApplying:
			return nil
		case r.Reason != "": // the apply failed; the peer applies it again at its next start
			return fmt.Errorf("the peer's apply of the staged resync: %s", r.Reason)
		}
	}
}
