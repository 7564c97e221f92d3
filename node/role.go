package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/export"
	"github.com/ldmirror/ldmirror/internal/failpoint"
	"github.com/ldmirror/ldmirror/transport"
)

// followControlPlane runs one term after the other, in the role the
// control plane names, until ctx ends: a primary term while it names this
// host primary, a secondary term otherwise. It acts only on states at least
// as new as the newest one the leader confirmed (controlState, watchControl),
// and starts a primary term only on a confirmed state.
func (n *Node) followControlPlane(ctx context.Context) error {
	// At start this member's copy may be far behind: a restarted member
	// restores an old snapshot and replays the log after it (docs/cluster.md,
	// "Fencing"), naming primaries of long-gone epochs on the way.
	early := n.listenNotReady()
	st, err := n.confirmState(ctx, "who is primary")
	early()
	if err != nil {
		return nil // stopped before the control plane answered
	}
	me := n.cfg.NodeID
	for ctx.Err() == nil {
		var err error
		role := cluster.RoleSecondary
		if st.Primary == me {
			role = cluster.RolePrimary
		}
		n.log.Debug("starting a term", "role", role, "epoch", st.Epoch, "index", st.Index)
		if role == cluster.RolePrimary {
			epoch := st.Epoch
			n.mu.Lock()
			n.epoch = epoch
			n.mu.Unlock()
			failpoint.Crash("node-promoted-before-primary-term")
			if err = n.preparePrimary(); err == nil {
				lost, stop := n.watchRole(ctx, func(s cluster.VolumeState) bool { return !s.Holds(me, epoch) }, "")
				err = n.runPrimary(ctx, lost)
				stop()
			}
		} else if err = n.prepareSecondary(); err == nil {
			// Ending this term closes the session of the primary it
			// replicates from: only for a promotion the leader confirms.
			promoted, stop := n.watchRole(ctx, func(s cluster.VolumeState) bool { return s.Primary == me }, "the promotion of this host")
			err = n.runSecondary(ctx, promoted)
			stop()
		}
		if err != nil && ctx.Err() == nil {
			n.log.Error("the "+string(role)+" term failed; retrying in 1 s", "err", err)
			n.setRefused(err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
		st = n.controlState()
		if st.Primary == me && !n.isConfirmed(st) {
			if st, err = n.confirmState(ctx, "the promotion of this host"); err != nil {
				return nil
			}
		}
	}
	return nil
}

// listenNotReady answers the primary on --listen until the returned func
// is called: that this host is not ready yet, so that the primary retries
// in a moment (and not after its backoff for a host that is down) while
// this one reads the control plane's state. The term that follows listens
// on its own; a failure to listen here is left for it to report.
func (n *Node) listenNotReady() (stop func()) {
	if n.cfg.Listen == "" {
		return func() {}
	}
	cfg := n.tcfg
	cfg.Admit = func(transport.Hello) error {
		return fmt.Errorf("%w: this host has not read the control plane's state since it started", transport.ErrNotReady)
	}
	ln, err := transport.Listen(n.cfg.Listen, cfg)
	if err != nil {
		n.log.Debug("cannot answer the primary while reading the control plane's state", "listen", n.cfg.Listen, "err", err)
		return func() {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = ln.Serve(ctx, n) // admits no one: n never handles a request
	}()
	return func() {
		cancel()
		<-done
	}
}

// confirmAttempt bounds one read through the leader, so that status and the
// log say why the node waits; confirmRetry is the pause after a failed one.
const (
	confirmAttempt = 2 * time.Second
	confirmRetry   = 250 * time.Millisecond
)

// confirmState reads the state through the raft leader (Consistent: this
// member's own copy, once it has applied what the leader had) and makes it
// the newest confirmed state: from then on the node ignores any older one.
// Without quorum, or while this member's copy catches up, it retries until
// ctx ends; status shows what it waits for, and the log says it once.
func (n *Node) confirmState(ctx context.Context, what string) (cluster.VolumeState, error) {
	waiting := "waiting for the control plane to confirm " + what
	n.setTransition(waiting)
	defer n.setTransition("")
	logged := false
	for {
		attempt, cancel := context.WithTimeout(ctx, confirmAttempt)
		st, err := n.cfg.ControlPlane.Consistent(attempt)
		cancel()
		if err == nil {
			n.mu.Lock()
			if older(st, n.confirmed) {
				st = n.confirmed // a read can only be newer, but keep the newest
			}
			n.confirmed = st
			n.mu.Unlock()
			n.log.Info("control plane state", "primary", st.Primary, "epoch", st.Epoch, "index", st.Index)
			return st, nil
		}
		if ctx.Err() != nil {
			return st, ctx.Err()
		}
		why := waiting + " (" + waitReason(err) + ")"
		n.setTransition(why)
		if !logged {
			n.log.Warn(why, "err", err)
			logged = true
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-time.After(confirmRetry):
		}
	}
}

// waitReason says in status why a read through the leader failed.
func waitReason(err error) string {
	switch {
	case errors.Is(err, cluster.ErrNoQuorum):
		return "no quorum"
	case errors.Is(err, cluster.ErrBehind):
		return "this member is catching up with the raft log"
	}
	return err.Error()
}

// older reports whether s is older than the confirmed state c: epochs never
// go back, and raft applies entries in index order, so a lower Index or
// Epoch is a lagging or replaying copy.
func older(s, c cluster.VolumeState) bool {
	return s.Index < c.Index || s.Epoch < c.Epoch
}

// isConfirmed reports whether st is the newest state the leader confirmed
// (controlState never returns an older one).
func (n *Node) isConfirmed(st cluster.VolumeState) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return st.Index <= n.confirmed.Index
}

// controlState is the control plane's state as the node acts on it: this
// member's copy, or the newest confirmed state if the copy is older (it
// lags, or replays old epochs after a restart).
func (n *Node) controlState() cluster.VolumeState {
	st := n.cfg.ControlPlane.State()
	n.mu.Lock()
	defer n.mu.Unlock()
	if older(st, n.confirmed) {
		st = n.confirmed
		st.Hosts = slices.Clone(st.Hosts)
	}
	return st
}

// watchControl is the control plane's Watch without the states older than
// the newest confirmed one. The channel closes when ctx ends.
func (n *Node) watchControl(ctx context.Context) <-chan cluster.VolumeState {
	in := n.cfg.ControlPlane.Watch(ctx)
	out := make(chan cluster.VolumeState)
	go func() {
		defer close(out)
		for st := range in {
			n.mu.Lock()
			stale := older(st, n.confirmed)
			n.mu.Unlock()
			if stale {
				continue
			}
			select {
			case out <- st:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

// watchRole returns a channel closed once the control plane's state
// satisfies changed, and a func that stops watching. States older than the
// newest confirmed one do not count (watchControl). If confirm names what
// the leader must confirm, a state that satisfies changed counts only if
// the state the leader then confirms satisfies it too; meanwhile status
// says what the node waits for.
func (n *Node) watchRole(ctx context.Context, changed func(cluster.VolumeState) bool, confirm string) (<-chan struct{}, func()) {
	ctx, cancel := context.WithCancel(ctx)
	ch := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for st := range n.watchControl(ctx) {
			if !changed(st) {
				continue
			}
			if confirm != "" {
				c, err := n.confirmState(ctx, confirm)
				if err != nil {
					return
				}
				if !changed(c) {
					n.log.Info("the control plane did not confirm "+confirm, "seen_primary", st.Primary, "seen_epoch", st.Epoch,
						"primary", c.Primary, "epoch", c.Epoch)
					continue
				}
			}
			close(ch)
			return
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
		if n.role == cluster.RolePrimary && n.epoch == e && n.export != nil {
			path := n.export.Path()
			n.mu.Unlock()
			return path, nil
		}
		next := n.termStart
		n.mu.Unlock()
		if st := n.controlState(); st.Epoch > e {
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

// ErrInUse refuses to give up the role while the volume is in use here.
var ErrInUse = errors.New("the volume is in use on this host")

// inUse says what holds the primary's export, or "" if nothing does.
func (n *Node) inUse() string {
	n.mu.Lock()
	exp := n.export
	n.mu.Unlock()
	if exp == nil {
		return ""
	}
	if devs := export.LoopDevicesOf(exp.Path()); len(devs) > 0 {
		return "loop device " + strings.Join(devs, ", ") + " is attached to the export"
	}
	return ""
}

// refuseInUse fails verb while the volume is in use here, unless force:
// once the role is gone the mounted file system's writes fail with I/O
// errors, and the host stays demoted until the loop device is released.
func (n *Node) refuseInUse(verb string, force bool) error {
	if force {
		return nil
	}
	if what := n.inUse(); what != "" {
		return fmt.Errorf("%w: %s; stop the directory server, umount the file system and run ldmirror detach first (or %s --force: the mounted file system's writes then fail)",
			ErrInUse, what, verb)
	}
	return nil
}

// swap runs the swap an operator asked for: through the agent if there is
// one (it stops the directory service first, and calls Swap), else Swap,
// which is refused while the volume is in use here unless force.
func (n *Node) swap(ctx context.Context, force bool) (cluster.Epoch, error) {
	if n.agent != nil {
		return n.agent.Swap(ctx)
	}
	if err := n.refuseInUse("swap", force); err != nil {
		return 0, err
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
	mr, gate, epoch := n.mirror, n.gate, n.epoch
	primary := n.role == cluster.RolePrimary && gate != nil
	n.mu.Unlock()
	if !primary {
		return 0, fmt.Errorf("%w: only the primary can swap", cluster.ErrNotPrimary)
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
	if err := mr.Drain(ctx); err != nil {
		return 0, fmt.Errorf("swap: drain the journal to the peer: %w", err)
	}
	if err := mr.Flush(); err != nil {
		return 0, fmt.Errorf("swap: flush both hosts: %w", err)
	}
	if ms := mr.Status(); !ms.Connected || ms.DirtyBlocks > 0 {
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
