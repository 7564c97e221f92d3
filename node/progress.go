package node

import (
	"context"
	"time"

	"github.com/ldmirror/ldmirror/mirror"
	"github.com/ldmirror/ldmirror/transport"
)

// The target of a resync shows the source's progress, as DRBD's SyncTarget
// does: the primary reports it over the link every progressEvery, and the
// secondary shows it while the reports keep coming (docs/operations.md,
// "Status").
const (
	progressEvery = 250 * time.Millisecond
	// targetStale is how long a secondary shows a report without a newer
	// one.
	targetStale = 3 * time.Second
)

// reportProgress tells the peer on s how far a resync of mr got, every
// progressEvery while one runs, until stop is called; then that it ended.
func (n *Node) reportProgress(s *transport.Session, mr *mirror.Mirror) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		sent := false
		for {
			select {
			case <-ctx.Done():
				if sent {
					n.sendProgress(s, transport.Progress{})
				}
				return
			case <-s.Done():
				return
			case <-t.C:
			}
			var st Status
			mirrorStatus(&st, mr.Status())
			if st.Replication != mirror.StateResyncing || st.ResyncTotal == 0 {
				continue
			}
			sent = true
			n.sendProgress(s, transport.Progress{
				DoneBlocks: st.ResyncDone, TotalBlocks: st.ResyncTotal,
				RateBytes: uint64(st.ResyncRate), ETA: time.Duration(st.ResyncETASec * float64(time.Second)),
			})
		}
	}()
	return func() { cancel(); <-done }
}

func (n *Node) sendProgress(s *transport.Session, p transport.Progress) {
	c, err := s.SubmitProgress(p)
	if err == nil {
		err = c.Wait()
	}
	if err != nil {
		n.log.Debug("resync progress not reported to the peer", "err", err)
	}
}

// setTargetProgress records the primary's report of a resync to this host.
func (n *Node) setTargetProgress(p transport.Progress) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.target, n.targetAt = p, time.Now()
}

// targetStatus shows a secondary as the target of the resync the primary
// reported last, unless the report is stale or the resync ended.
func targetStatus(st *Status, p transport.Progress, at time.Time) {
	if st.Link != LinkConnected || p.TotalBlocks == 0 || time.Since(at) > targetStale {
		return
	}
	st.Replication = ReplicationResyncTarget
	st.ResyncDone, st.ResyncTotal = p.DoneBlocks, p.TotalBlocks
	st.ResyncRate, st.ResyncETASec = float64(p.RateBytes), p.ETA.Seconds()
}
