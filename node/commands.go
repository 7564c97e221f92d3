package node

import (
	"context"
	"fmt"
	"time"

	"github.com/ldmirror/ldmirror/bitmap"
	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/mirror"
	"github.com/ldmirror/ldmirror/transport"
)

// primaryParts returns the running primary term's mirror and dirty set.
func (n *Node) primaryParts() (*mirror.Mirror, *bitmap.Set, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.role != cluster.RolePrimary || n.mirror == nil || n.cfg.Passthrough {
		return nil, nil, fmt.Errorf("%w: only the primary can do this", cluster.ErrNotPrimary)
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
	if s := mr.Session(); s != nil {
		defer n.reportProgress(s, mr)()
	}
	err = mr.Resync(ctx, checksum)
	if s := mr.Session(); err == nil && s != nil {
		n.peerInSync(ctx, mr, s, false)
	}
	res.Skipped = mr.Status().Resync.Skipped - skipped
	res.Seconds = time.Since(start).Seconds()
	n.log.Info("resync requested by the operator finished", "full", full, "checksum", checksum, "blocks", res.Blocks, "skipped", res.Skipped, "err", err)
	return res, err
}
