package mirror

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/ldmirror/ldmirror/blockdev"

	"github.com/ldmirror/ldmirror/transport"
)

// Fence commits "peer outdated" with the control plane. The Mirror calls it
// before it acknowledges a write (or a flush) its peer may lack, once per
// loss of the peer (docs/invariants.md, invariant 4). It may block, which
// suspends every write that cannot be shipped, and returns an error only
// when this host may no longer write (or ctx ended: the Mirror is closing).
type Fence func(ctx context.Context) error

// ResyncStart records the resync's target with the control plane before
// the resync sends its first block: "inconsistent" when the peer takes it
// unprotected (until the resync completes it holds a mix of old and new
// blocks and must not be promoted), "outdated" when it stages it (staged:
// it keeps its data as of its disconnect, which a forced promotion may
// take). An error stops the resync before it changed anything.
type ResyncStart func(ctx context.Context, staged bool) error

// ErrFenced reports a write refused because this host may no longer write.
var ErrFenced = errors.New("this host may not write: the control plane refused to mark its peer outdated")

// ErrTargetNotMarked reports a resync that did not start because the
// control plane did not record its target (no quorum, or this
// host was deposed).
var ErrTargetNotMarked = errors.New("the resync target could not be recorded with the control plane")

// ErrPeerChanged reports that the peer was lost (or replaced) while a
// commit about it waited: what the commit would have said is no longer
// known to be true.
var ErrPeerChanged = errors.New("the peer session changed")

// link is a stretch of the Mirror's life with one peer session, or with
// none. Every write and flush registers with the link it started in until
// it has settled (acknowledged by the peer, or its blocks marked out of
// sync); SetPeer starts a new link only once the old one's I/O settled. So
// a resync on the new session starts from an out-of-sync set that holds
// every block the old one failed to ship, and no write of an old session
// can fail behind the back of a resync that already called the peer in
// sync.
type link struct {
	s    *transport.Session // nil: no peer
	lost bool               // s failed; guarded by Mirror.mu
	io   sync.WaitGroup     // writes and flushes begun in this link
	// since is the number of peer losses when the link began: a write
	// that failed in loss since or earlier failed before it.
	since uint64
	// inSync: CommitInSync recorded the peer in sync on s. Guarded by
	// Mirror.mu, set under fenceMu.
	inSync bool
}

// joinLink registers an I/O with the current link and returns the link
// and its session (nil when there is none or it was lost). The caller
// calls l.io.Done once the I/O settled.
func (m *Mirror) joinLink() (l *link, s *transport.Session) {
	m.mu.Lock()
	defer m.mu.Unlock()
	l = m.link
	l.io.Add(1)
	if !l.lost {
		s = l.s
	}
	return l, s
}

// lossCount is the number of peer losses so far: the one a write that did
// not reach the peer belongs to, read after its failure was recorded.
func (m *Mirror) lossCount() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.losses
}

// ensureFenced returns once the control plane committed "peer outdated" in
// or after peer loss number loss, or with the reason a write that failed
// to reach the peer in that loss must not be acknowledged. A commit made in
// an earlier loss does not count: a resync may have called the peer
// uptodate since. One made in this loss does, even before the write failed:
// the peer stays outdated until a resync on a later session, and that
// resync copies this write's blocks (they were marked out of sync before
// the session began, see link).
//
// Nor does a loss after which the peer came back, caught up and was
// recorded in sync (CommitInSync) on a session that is still live, with
// nothing out of sync since: every block a write of that loss failed to
// ship was marked out of sync before that session began (see link) and
// has been copied to the peer since, so the write is on the peer. A
// commit then would mark a peer outdated that holds every write, and the
// generation the fence starts (docs/cluster.md, "Fencing", 6) would never
// reach it while the session lives: both hosts in sync with different
// generations, and the next failover to the peer refused.
func (m *Mirror) ensureFenced(loss uint64) error {
	m.fenceMu.Lock()
	defer m.fenceMu.Unlock()
	if m.fenceErr != nil {
		return m.fenceErr
	}
	if m.fence == nil || m.fencedLoss >= loss || m.caughtUpSince(loss) {
		return nil
	}
	current := m.lossCount()
	m.suspended.Store(true)
	defer m.suspended.Store(false)
	if err := m.fence(m.closing); err != nil {
		if m.closing.Err() == nil {
			m.fenceErr = fmt.Errorf("%w: %w", ErrFenced, err)
			m.refused.Store(true)
			return m.fenceErr
		}
		return fmt.Errorf("%w: closing before the peer was marked outdated", blockdev.ErrClosed)
	}
	m.fencedLoss = current
	return nil
}

// caughtUpSince reports whether the peer was recorded in sync, after peer
// loss number loss, on the session that is still live, and nothing went
// out of sync since. fenceMu is held: no CommitInSync runs meanwhile.
func (m *Mirror) caughtUpSince(loss uint64) bool {
	m.mu.Lock()
	l := m.link
	back := l.s != nil && !l.lost && l.inSync && l.since >= loss
	m.mu.Unlock()
	return back && m.dirty.OutOfSync().IsEmpty()
}

// CommitInSync runs commit, which records the peer uptodate with the
// control plane, if the peer holds every write: a session is live and no
// block is out of sync (a write of an earlier session that failed was
// marked out of sync before this session began, see link). It holds the
// fence lock meanwhile, so a loss of the session after the check is fenced
// by a commit that the control plane applies after this one.
func (m *Mirror) CommitInSync(ctx context.Context, commit func(context.Context) error) error {
	m.fenceMu.Lock()
	defer m.fenceMu.Unlock()
	if m.fenceErr != nil {
		return m.fenceErr
	}
	m.mu.Lock()
	l := m.link
	live := l.s != nil && !l.lost
	m.mu.Unlock()
	if !live {
		return fmt.Errorf("%w: the peer was lost before it could be recorded in sync", ErrPeerChanged)
	}
	if n := m.dirty.OutOfSync().GetCardinality(); n > 0 {
		return fmt.Errorf("%w: %d blocks are out of sync", ErrPeerChanged, n)
	}
	if err := commit(ctx); err != nil {
		return err
	}
	m.mu.Lock()
	l.inSync = true
	m.mu.Unlock()
	return nil
}

// markResyncTarget makes the resync start commit, if there is one.
func (m *Mirror) markResyncTarget(ctx context.Context, staged bool) error {
	if m.markTarget == nil {
		return nil
	}
	if err := m.markTarget(ctx, staged); err != nil {
		return fmt.Errorf("%w: %w", ErrTargetNotMarked, err)
	}
	return nil
}

// SetPeer starts shipping writes to s (nil: no peer). It returns once the
// writes and flushes begun before it settled. Blocks that went out of sync
// meanwhile stay dirty until Resync copies them.
//
// In async mode the journal starts shipping to s only once CatchUp decided
// from where; until then writes are journaled and wait.
func (m *Mirror) SetPeer(s *transport.Session) {
	m.rep.setPeer(s)
	m.mu.Lock()
	old := m.link
	if old.s != nil && !old.lost {
		m.losses++
		m.retire(old.s)
	}
	m.link = &link{s: s, since: m.losses}
	m.lastErr = ""
	m.mu.Unlock()
	old.io.Wait()
}

// retire folds an ending session's counters into the totals. m.mu is held.
func (m *Mirror) retire(s *transport.Session) {
	st := s.Stats()
	m.past.Writes += st.Writes
	m.past.Bytes += st.Bytes
	m.past.Flushes += st.Flushes
}

// Session returns the live peer session, or nil.
func (m *Mirror) Session() *transport.Session { return m.session() }

// session returns the live peer session, or nil.
func (m *Mirror) session() *transport.Session {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.link.lost {
		return nil
	}
	return m.link.s
}

// peerLost stops shipping to s after it failed with err: a new peer loss
// begins, which needs a fence commit of its own.
func (m *Mirror) peerLost(s *transport.Session, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.link.s != s || m.link.lost {
		return
	}
	m.link.lost = true
	m.losses++
	m.retire(s)
	m.lastErr = err.Error()
	// Not "writes continue": with a fence they wait for it, which says so.
	m.log.Warn("peer lost: the blocks written from now on stay dirty until it returns", "err", err)
}
