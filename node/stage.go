package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/mirror"
	"github.com/ldmirror/ldmirror/stage"
	"github.com/ldmirror/ldmirror/transport"
	"github.com/ldmirror/ldmirror/volume"
)

// A resync target that stays usable (docs/design.md): a secondary applies
// the primary's requests through its staging area (package stage), which
// stages a bitmap resync until it completes. This file is the host's
// side of it: the area across terms, the answers to the primary's Stage
// requests, the primary that asks for them, the revert (`ldmirror resync
// --abort`, a promotion) and what status says.

// Errors of the resync target's commands.
var (
	// ErrResyncApplying refuses to promote, or to abort the resync of, a
	// host that applies a completed resync: it holds the source's data
	// once that ends, shortly.
	ErrResyncApplying = errors.New("this host is applying a completed resync")
	// ErrNoStagedResync: `resync --abort` with nothing staged.
	ErrNoStagedResync = errors.New("no resync is staged here")
	// ErrSourceConnected refuses `resync --abort` while the resync's source
	// is connected: the resync runs.
	ErrSourceConnected = errors.New("the resync source is connected")
)

// errAborting fails the primary's requests while `resync --abort` runs.
var errAborting = errors.New("this host is discarding its staged resync (ldmirror resync --abort)")

// openStage opens the volume's staging area, reading back what a previous
// run staged, and the target that answers the primary's Stage requests.
func (n *Node) openStage() error {
	a, err := stage.Open(filepath.Join(n.cfg.Dir, volume.StageFile), n.dev,
		stage.Geometry{Size: n.meta.Size, BlockSize: n.meta.BlockSize}, n.log)
	if err != nil {
		return err
	}
	n.stage = a
	n.stageTarget = &stage.Target{Area: a, Node: n.cfg.NodeID, Off: n.cfg.NoResyncProtection, Unsafe: n.cfg.UnsafeInconsistent, Start: n.stageStart}
	return nil
}

// closeDisk stops the staging area and closes the backing file.
func (n *Node) closeDisk() error {
	return errors.Join(n.stage.Close(), n.dev.Close())
}

// stageStart says what a staged resync starts from: the volume's data as
// of its last write (the backing file's modification time), unless the
// volume holds nothing worth keeping.
func (n *Node) stageStart() (stage.Begin, bool, string) {
	n.mu.Lock()
	behind, ln, discarded := n.behind, n.ln, n.meta.Generations.Discarded()
	n.mu.Unlock()
	switch {
	case discarded:
		return stage.Begin{}, false, fmt.Sprintf("%s discarded its data (ldmirror resolve --discard-local): nothing to keep", n.cfg.NodeID)
	case behind != nil && behind.GetCardinality() >= uint64(n.meta.Size/int64(n.meta.BlockSize)):
		return stage.Begin{}, false, fmt.Sprintf("every block of %s may differ (attach-disk --full): nothing to keep", n.cfg.NodeID)
	}
	b := stage.Begin{AsOf: time.Now()}
	if st, err := os.Stat(filepath.Join(n.cfg.Dir, volume.BackingFile)); err == nil {
		b.AsOf = st.ModTime()
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			b.Unallocated = max(st.Size()-sys.Blocks*512, 0)
		}
	}
	if ln != nil {
		if s := ln.Active(); s != nil {
			b.Source = s.Peer().NodeID
		}
	}
	return b, true, ""
}

// handleStage answers a primary's Stage request (Handle refuses it while
// an abort runs).
func (n *Node) handleStage(req *transport.Request) {
	n.stageTarget.Handle(req)
}

// protectPeer, as a new session to the peer starts, asks the peer to stage
// what follows in sync mode (the application's writes reach it from now
// on, before the resync's first block); in async mode it only learns what
// the peer stages (the journal's records keep it consistent until a bitmap
// resync begins). A refusal closes the session: the operator must act.
func (n *Node) protectPeer(ctx context.Context, s *transport.Session, mr *mirror.Mirror) error {
	_, err := mr.ProtectPeer(ctx, s, n.cfg.Mode != mirror.ModeAsync)
	if err == nil {
		return nil
	}
	s.Close()
	if errors.Is(err, mirror.ErrStageRefused) {
		return fmt.Errorf("%w: %w", ErrPeerNotAdmitted, err)
	}
	return err
}

// resolveStage readies the volume for a primary term: a committed resync
// is applied first; a staged one is discarded, and the host serves its
// data as of when it last applied its peer's writes in order: what the
// peer wrote after that is lost.
func (n *Node) resolveStage() error {
	switch in := n.stage.Info(); in.State {
	case stage.Idle:
		return nil
	case stage.Committing, stage.Applying:
		n.log.Warn("a completed resync is being applied here: serving as primary once it is", "blocks", in.ApplyTotal)
		return n.stage.WaitApplied(context.Background())
	}
	in, _, err := n.stage.Discard()
	if err != nil {
		return err
	}
	n.log.Warn("serving as primary with the data this host held before its resync: what its resync source wrote after that time is lost; the staged resync is discarded",
		"consistent_as_of", in.AsOf.Format(time.RFC3339), "source", in.Source, "staged_blocks", in.Blocks)
	return nil
}

// AbortResult is what `ldmirror resync --abort` reports.
type AbortResult struct {
	ConsistentAsOf time.Time `json:"consistent_as_of"`
	Source         string    `json:"source,omitempty"`
	Blocks         uint64    `json:"discarded_blocks"`
	Bytes          int64     `json:"discarded_bytes"`
}

// AbortResync is `ldmirror resync --abort` on a resync's target whose
// source is gone: it discards the staged resync, so that the volume keeps
// the data it had as of its last in-order write, and records the blocks it
// had staged as behind (the source, back, resyncs them). Refused while the
// source is connected, and once the resync completed and is applied.
func (n *Node) AbortResync(context.Context) (AbortResult, error) {
	n.mu.Lock()
	if n.role == cluster.RolePrimary {
		n.mu.Unlock()
		return AbortResult{}, fmt.Errorf("%w: resync --abort runs on the resync's target", cluster.ErrIsPrimary)
	}
	if n.abort {
		n.mu.Unlock()
		return AbortResult{}, fmt.Errorf("resync --abort: %w", ErrBusy)
	}
	n.abort = true
	ln := n.ln
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		n.abort = false
		n.mu.Unlock()
	}()
	if ln != nil {
		if s := ln.Active(); s != nil {
			return AbortResult{}, fmt.Errorf("%w: %s is connected and its resync runs; --abort is for a source that is gone", ErrSourceConnected, s.Peer().NodeID)
		}
	}
	switch in := n.stage.Info(); in.State {
	case stage.Idle:
		return AbortResult{}, ErrNoStagedResync
	case stage.Committing, stage.Applying:
		return AbortResult{}, fmt.Errorf("%w (%d of %d blocks): it cannot be undone; wait for it", ErrResyncApplying, in.ApplyDone, in.ApplyTotal)
	}
	in, staged, err := n.stage.Discard()
	if err != nil {
		return AbortResult{}, err
	}
	if ln != nil {
		if s := ln.Active(); s != nil { // came in meanwhile: its requests were refused
			s.Close(errAborting)
		}
	}
	if err := n.addBehind(staged); err != nil {
		return AbortResult{}, err
	}
	n.log.Warn("resync aborted by the operator: this host keeps its data as of the time below", "consistent_as_of", in.AsOf.Format(time.RFC3339), "source", in.Source, "blocks", in.Blocks)
	return AbortResult{ConsistentAsOf: in.AsOf, Source: in.Source, Blocks: in.Blocks, Bytes: in.Bytes}, nil
}

// addBehind records blocks as possibly different from the primary,
// durably: a discarded staged resync leaves the volume without them again.
func (n *Node) addBehind(blocks *roaring.Bitmap) error {
	if blocks.IsEmpty() {
		return nil
	}
	sb, _, err := n.openScoreboard()
	if err != nil {
		return err
	}
	if err := errors.Join(n.recordBehind(sb, blocks), sb.Close()); err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.behind == nil {
		n.behind = roaring.New()
	}
	n.behind.Or(blocks)
	return nil
}

// CheckPromote refuses to promote this host while it applies a completed
// resync; for a forced promotion of a host that stages one, it says what
// is lost. Promotions of other hosts pass.
func (n *Node) CheckPromote(node string, force bool) (string, error) {
	if node != n.cfg.NodeID {
		return "", nil
	}
	switch in := n.stage.Info(); in.State {
	case stage.Committing, stage.Applying:
		return "", fmt.Errorf("%w (%d of %d blocks applied): promote it once that ended, in seconds (status shows it)", ErrResyncApplying, in.ApplyDone, in.ApplyTotal)
	case stage.Staging:
		if !force {
			return "", nil
		}
		src := in.Source
		if src == "" {
			src = "its resync source"
		}
		return fmt.Sprintf("%s serves its data as of %s: what %s wrote after that is lost; its staged resync (%s) is discarded",
			n.cfg.NodeID, in.AsOf.Format(time.RFC3339), src, sizeMiB(in.Bytes)), nil
	}
	return "", nil
}

// stageStatus fills the resync target's part of status.
func (n *Node) stageStatus(st *Status) {
	in := n.stage.Info()
	if in.State == stage.Idle {
		return
	}
	st.StagedBytes, st.ApplyDoneBlocks, st.ApplyTotalBlocks = in.Bytes, in.ApplyDone, in.ApplyTotal
	asOf := in.AsOf.UTC().Format(time.RFC3339)
	switch {
	case in.State != stage.Staging:
		st.ResyncTarget = fmt.Sprintf("applying the completed resync: %d of %d blocks", in.ApplyDone, in.ApplyTotal)
		if in.Err != nil {
			st.ResyncTarget += "; failed: " + in.Err.Error() + " (it is applied again at the next start)"
		}
	case st.Link == LinkConnected:
		st.ConsistentAsOf = in.AsOf.UTC()
		st.ResyncTarget = "resyncing (target consistent: as of " + asOf + ")"
	default:
		st.ConsistentAsOf = in.AsOf.UTC()
		src := in.Source
		if src == "" {
			src = "the primary"
		}
		st.ResyncTarget = fmt.Sprintf("outdated, consistent as of %s (a resync from %s is staged, %s: it resumes when %s returns; ldmirror resync --abort discards it)",
			asOf, src, sizeMiB(in.Bytes), src)
	}
}

// peerStageStatus fills the primary's view of its peer's staging area.
func peerStageStatus(st *Status, r transport.StageReply) {
	switch r.State {
	case transport.StageStaging:
		st.PeerStage = "staging (target consistent: as of " + r.AsOf.UTC().Format(time.RFC3339) + ")"
		st.PeerConsistentAsOf = r.AsOf.UTC()
	case transport.StageApplying:
		st.PeerStage = fmt.Sprintf("applying the completed resync: %d of %d blocks", r.ApplyDone, r.ApplyTotal)
	case transport.StageUnprotected:
		st.PeerStage = "unprotected (inconsistent until the resync completes): " + r.Reason
	case transport.StageRefused:
		st.PeerStage = "refused: " + r.Reason
	}
}

func sizeMiB(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// refuseStage ends a session whose peer refused to stage the resync, after
// a pause, so that the next one is refused at its start (protectPeer) and
// waits as a refused peer does; status shows why meanwhile.
func (n *Node) refuseStage(ctx context.Context, s *transport.Session, err error) {
	n.setRefused(err)
	select {
	case <-ctx.Done():
	case <-s.Done():
	case <-time.After(5 * time.Second):
	}
	s.Close()
}
