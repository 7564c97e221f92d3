package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/node"
)

// failover is the runbook's manual failover while the primary is dead,
// stopped or cut off: read `cluster status` on the survivor and promote it
// if it is uptodate (never --force).
func (c *campaign) failover(ctx context.Context, r *roundRun, from, to string) {
	var last string
	err := waitFor(ctx, 30*time.Second, "the failover to "+to, func() bool {
		v, err := c.h.clusterStatus(ctx, to)
		if err != nil {
			last = err.Error()
			return false
		}
		if v.Volume.Primary != from {
			last = fmt.Sprintf("no failover: the control plane names %q primary", v.Volume.Primary)
			return true
		}
		if d := v.disk(to); d != "uptodate" {
			last = fmt.Sprintf("no failover: %s is %s, and the runbook promotes only an uptodate host", to, d)
			return true
		}
		out, err := c.h.cli(ctx, 15*time.Second, "promote", to, "--control", c.h.control(to), "--timeout", "5s")
		if err != nil {
			last = err.Error()
			// Without quorum (the survivor's raft has not elected a
			// leader yet) the operator tries again; a refusal is final.
			return !strings.Contains(last, "no quorum")
		}
		r.movedBy = "promote"
		last = strings.TrimSpace(out)
		return true
	})
	if err != nil {
		last = fmt.Sprintf("%v (last: %s)", err, last)
	}
	r.notef("failover: %s", last)
}

// settle is the rest of the runbook once the fault is undone: wait until
// the control plane's primary serves with its peer connected, uptodate and
// replicating; release the file system on a primary the control plane no
// longer names (so that it can turn secondary); promote an uptodate host
// if no primary is named, or if the named one does not serve within
// notServingGrace. Who is primary comes from a read through the raft
// leader (`cluster status --consistent`): a host's own copy may lag, and
// right after a swap both hosts' copies may still name the old primary.
func (c *campaign) settle(ctx context.Context, r *roundRun) error {
	start := time.Now()
	st := &settler{c: c, r: r}
	err := waitFor(ctx, settleLimit, "a primary serving with its peer uptodate and in sync", func() bool { return st.poll(ctx) })
	if err != nil {
		return fmt.Errorf("%w after %v; last: %s", err, time.Since(start).Round(time.Millisecond), st.last)
	}
	if st.stuck != nil {
		return st.stuck
	}
	if r.final != r.P && r.movedBy == "" {
		r.movedBy = "promote"
		if r.handOver {
			// docs/operations.md: the primary whose disk failed hands the
			// role to a peer that holds every acknowledged write.
			r.movedBy = "hand-over"
		}
	}
	return nil
}

// settler is the runbook's operator between a fault's undo and a
// redundant pair: it polls both data hosts and acts when a condition
// lasts past its grace.
type settler struct {
	c *campaign
	r *roundRun

	last  string       // what the last poll saw, for the timeout's message
	cv    *clusterView // the leader's state, refetched when a host knows a newer epoch
	stuck error        // the deposed primary's writers did not return

	// when each condition began; zero while it does not hold
	noPrimary, notServing, refused, unlinked time.Time
}

// lasted reports whether the condition that *since tracks has held for
// longer than grace, starting its clock when it begins to hold.
func lasted(since *time.Time, grace time.Duration) bool {
	if since.IsZero() {
		*since = time.Now()
		return false
	}
	return time.Since(*since) > grace
}

// poll looks once; true ends the wait (redundant, or stuck).
func (st *settler) poll(ctx context.Context) bool {
	c, r := st.c, st.r
	sts := map[string]node.Status{}
	newest := uint64(0)
	for _, h := range dataHosts() {
		s, err := c.h.status(ctx, h)
		if err != nil {
			st.last = fmt.Sprintf("%s: %v", h, err)
			continue
		}
		sts[h] = s
		newest = max(newest, s.Epoch)
		c.attachDisks(ctx, r, h, nodeDisk{disk: s.Disk, primary: s.Role == cluster.RolePrimary, lastError: s.LastError})
	}
	if st.cv == nil || newest > st.cv.Volume.Epoch {
		v, err := c.consistentState(ctx)
		if err != nil {
			st.last = err.Error()
			return false
		}
		st.cv = &v
	}
	named, epoch := st.cv.Volume.Primary, st.cv.Volume.Epoch
	if named != "" && named != r.P && !r.tornDown {
		// The writers' primary was deposed: its writes fail, and it
		// turns secondary only once its export is released.
		if st.stuck = r.teardown(ctx); st.stuck != nil {
			return true
		}
	}
	if named == "" {
		if lasted(&st.noPrimary, 5*time.Second) {
			c.promoteUptodate(ctx, r)
			st.noPrimary, st.cv = time.Time{}, nil
		}
		st.last = fmt.Sprintf("no primary named (epoch %d)", epoch)
		return false
	}
	st.noPrimary = time.Time{}
	p, pok := sts[named]
	s, sok := sts[other(named)]
	if !(pok && p.Role == cluster.RolePrimary && p.Export != "" && p.ServingEpoch == p.Epoch && p.Epoch >= epoch) {
		if lasted(&st.notServing, notServingGrace) {
			r.notef("runbook: %s is named primary but has not served for %v", named, notServingGrace)
			c.failover(ctx, r, named, other(named))
			st.notServing, st.cv = time.Time{}, nil
		}
		st.last = fmt.Sprintf("%s named primary in epoch %d, not serving: %s", named, epoch, brief(p))
		return false
	}
	st.notServing = time.Time{}
	if r.servedAt.IsZero() {
		r.servedAt = time.Now()
	}
	if !(p.Link == node.LinkConnected && p.Replication == "replicating" && p.PeerDisk == "uptodate" &&
		sok && s.Role == cluster.RoleSecondary && s.Epoch >= epoch) {
		st.last = fmt.Sprintf("%s serves; %s: %s; %s: %s", named, named, brief(p), other(named), brief(s))
		return st.peerNotInSync(ctx, named, p, s, sok)
	}
	r.final = named
	r.redundantAt = time.Now()
	return true
}

// peerNotInSync handles a serving primary whose peer is not in sync: a
// peer unlinked for long is restarted, one refused for long is discarded
// (resolve --discard-local), as the runbook says.
func (st *settler) peerNotInSync(ctx context.Context, named string, p, s node.Status, sok bool) bool {
	// A peer whose disk failed refuses the primary until the runbook's
	// attach-disk (attachDisks), not a split brain.
	peerDiskFailed := sok && s.Disk == cluster.DiskFailed
	refusedPeer := strings.Contains(p.LastError, "peer refused")
	if p.Link != node.LinkConnected && sok && !peerDiskFailed && !refusedPeer {
		if lasted(&st.unlinked, unlinkedGrace) {
			if st.stuck = st.c.restartPeer(ctx, st.r, named, p.LastError, s); st.stuck != nil {
				return true
			}
			st.unlinked = time.Time{}
		}
	} else {
		st.unlinked = time.Time{}
	}
	if p.Link == node.LinkConnected || peerDiskFailed || !refusedPeer {
		st.refused = time.Time{}
		return false
	}
	if lasted(&st.refused, refusalGrace) {
		if st.stuck = st.c.discardPeer(ctx, st.r, named, p.LastError); st.stuck != nil {
			return true
		}
		st.refused = time.Time{}
	}
	return false
}

// discardPeer is docs/operations.md's remedy for a peer the primary
// refuses (split brain, or "peer is the resync source"): keep the
// primary's data, stop the peer's daemon, `ldmirror resolve
// --discard-local` on it, start it again; the primary then copies the
// whole volume to it. The round fails: the runbook alone did not recover.
func (c *campaign) discardPeer(ctx context.Context, r *roundRun, primary, why string) error {
	peer := other(primary)
	r.refusals = append(r.refusals, fmt.Sprintf("%s refused %s for %v (%s): ran resolve --discard-local on %s", primary, peer, refusalGrace, why, peer))
	r.notef("runbook: %s refuses %s (%s); stopping %s, resolve --discard-local, restarting it", primary, peer, why, peer)
	if err := c.h.stop(ctx, peer); err != nil {
		return err
	}
	out, err := c.h.cli(ctx, 30*time.Second, "resolve", "--dir", c.h.dir[peer], "--discard-local")
	if err != nil {
		return err
	}
	r.notef("%s", strings.TrimSpace(out))
	return c.h.start(ctx, peer, r.n)
}

// restartPeer is what an operator tries when the primary stays without
// its peer although the peer's daemon runs and neither refuses it nor
// reports a failed disk: restart the peer's daemon (SIGTERM, start). The
// round fails: the runbook has no such step.
func (c *campaign) restartPeer(ctx context.Context, r *roundRun, primary, why string, st node.Status) error {
	peer := other(primary)
	r.restarts = append(r.restarts, fmt.Sprintf("%s stayed without its running peer %s for %v after the fault was undone (%s; %s: %s): restarted %s's daemon",
		primary, peer, unlinkedGrace, why, peer, brief(st), peer))
	r.notef("operator: %s stays without %s (%s; %s: %s); restarting %s's daemon", primary, peer, why, peer, brief(st), peer)
	if err := c.h.stop(ctx, peer); err != nil {
		return err
	}
	return c.h.start(ctx, peer, r.n)
}

// consistentState reads the control plane's state through the raft
// leader, from whichever data host answers.
func (c *campaign) consistentState(ctx context.Context) (clusterView, error) {
	var errs []error
	for _, h := range dataHosts() {
		out, err := c.h.cli(ctx, 10*time.Second, "cluster", "status", "--json", "--consistent", "--timeout", "3s", "--control", c.h.control(h))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var v clusterView
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			errs = append(errs, err)
			continue
		}
		return v, nil
	}
	return clusterView{}, fmt.Errorf("no consistent read of the control plane: %w", errors.Join(errs...))
}

// promoteUptodate is the runbook when no primary is named: promote the
// host the control plane records uptodate, the old primary first.
func (c *campaign) promoteUptodate(ctx context.Context, r *roundRun) {
	for _, h := range []string{r.P, r.S} {
		v, err := c.h.clusterStatus(ctx, h)
		if err != nil || v.Volume.Primary != "" {
			continue
		}
		for _, cand := range []string{r.P, r.S} {
			if v.disk(cand) != "uptodate" {
				continue
			}
			out, err := c.h.cli(ctx, 15*time.Second, "promote", cand, "--control", c.h.control(h), "--timeout", "5s")
			r.notef("runbook: no primary named; promote %s: %s %v", cand, strings.TrimSpace(out), err)
			if err == nil && cand != r.P {
				r.movedBy = "promote"
			}
			return
		}
		r.notef("runbook: no primary named and no uptodate host: %+v (only --force would promote)", v.Volume.Hosts)
		return
	}
}

// brief is the part of a status a stuck wait reports.
func brief(st node.Status) string {
	return fmt.Sprintf("{role %s epoch %d serving %d named %s link %s replication %q peer_disk %s dirty %d generations %s transition %q last_error %q}",
		st.Role, st.Epoch, st.ServingEpoch, st.NamedPrimary, st.Link, st.Replication, st.PeerDisk, st.DirtyBlocks, st.Generations, st.Transition, st.LastError)
}

// waitRedundant waits until primary serves with its peer uptodate.
func (c *campaign) waitRedundant(ctx context.Context, primary string, limit time.Duration) error {
	var last string
	err := waitFor(ctx, limit, primary+" to serve and its peer to be uptodate", func() bool {
		st, err := c.h.status(ctx, primary)
		if err != nil {
			last = err.Error()
			return false
		}
		last = brief(st)
		return st.Role == cluster.RolePrimary && st.Export != "" && st.Link == node.LinkConnected && st.PeerDisk == "uptodate"
	})
	if err != nil {
		return fmt.Errorf("%w; last: %s", err, last)
	}
	return nil
}

// quiesce waits until nothing is in flight and both hosts hold the same
// data by the daemons' account: connected, no dirty block, replicating,
// the peer uptodate and secondary in the same epoch; then, a little
// longer, for both to hold the same generations (docs/operations.md: "then
// both hosts hold the same generation"). Generations that stay different
// are reported, not waited for: the data may well be equal, and the byte
// comparison that follows says whether it is.
func (c *campaign) quiesce(ctx context.Context, primary string) (genNote string, err error) {
	var last string
	var p, s node.Status
	err = waitFor(ctx, quiesceLimit, "both hosts in sync", func() bool {
		var err error
		if p, err = c.h.status(ctx, primary); err != nil {
			last = err.Error()
			return false
		}
		if s, err = c.h.status(ctx, other(primary)); err != nil {
			last = err.Error()
			return false
		}
		last = fmt.Sprintf("%s %s; %s %s", primary, brief(p), other(primary), brief(s))
		return p.Role == cluster.RolePrimary && p.NamedPrimary == primary && p.ServingEpoch == p.Epoch &&
			p.Link == node.LinkConnected && p.DirtyBlocks == 0 && p.Replication == "replicating" &&
			p.PeerDisk == "uptodate" && s.Role == cluster.RoleSecondary && s.Epoch == p.Epoch
	})
	if err != nil {
		return "", fmt.Errorf("%w; last: %s", err, last)
	}
	if err := waitFor(ctx, 5*time.Second, "both hosts to hold the same generations", func() bool {
		var perr, serr error
		p, perr = c.h.status(ctx, primary)
		s, serr = c.h.status(ctx, other(primary))
		return perr == nil && serr == nil && p.Generations == s.Generations
	}); err != nil {
		return fmt.Sprintf("in sync (connected, nothing dirty, peer uptodate) but the generations differ: %s %s, %s %s",
			primary, p.Generations, other(primary), s.Generations), nil
	}
	return "", nil
}
