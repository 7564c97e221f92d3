package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/hashicorp/raft"
	"github.com/ldmirror/ldmirror/pki"
)

// Cluster is one member of the control plane. Its methods are safe for
// concurrent use.
type Cluster struct {
	cfg       Config
	advertise string
	log       *slog.Logger
	fsm       *fsm
	store     *store
	raft      *raft.Raft
	trans     *raft.NetworkTransport
	mux       *mux

	// ctx ends at Close; requests served for peers derive from it.
	ctx  context.Context
	stop context.CancelFunc
	// mu orders starting goroutines against Close waiting for them.
	mu        sync.Mutex
	closing   bool
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error
}

// Open starts a member from cfg.DataDir: a new, empty one that then calls
// Bootstrap or Join, or one that restarts with its log and snapshots. A
// raft store or snapshot that cannot be read fails with ErrCorruptStore and
// the file's name.
func Open(cfg Config) (_ *Cluster, err error) {
	cfg, err = cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	hcl := newHCLogger(cfg.Logger).(*hclogger)
	notify := make(chan bool, 8)
	rc := cfg.raftConfig(hcl, notify)
	if err := raft.ValidateConfig(rc); err != nil {
		return nil, fmt.Errorf("cluster config: %w", err)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("cluster data directory: %w", err)
	}
	st, err := openStore(cfg.DataDir, hcl)
	if err != nil {
		return nil, err
	}
	c := &Cluster{cfg: cfg, log: cfg.Logger, fsm: newFSM(), store: st}
	c.ctx, c.stop = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			c.stop()
			if c.mux != nil {
				c.mux.close()
			}
			c.fsm.close()
			st.close()
		}
	}()

	ln, err := net.Listen("tcp", cfg.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("cluster listen: %w", err)
	}
	c.advertise = cfg.AdvertiseAddr
	if c.advertise == "" {
		c.advertise = ln.Addr().String()
		if ip := ln.Addr().(*net.TCPAddr).IP; ip.IsUnspecified() {
			ln.Close()
			return nil, fmt.Errorf("cluster config: bind address %s is unspecified; set an advertise address peers can dial", cfg.BindAddr)
		}
	}
	c.mux = newMux(ln, c.advertise, cfg.TLS, cfg.DialTimeout, cfg.Logger)
	c.mux.rpc = c.serveRPC
	c.mux.raftPeer = c.raftPeer
	c.mux.tunnelTo = c.tunnelTo
	c.trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  raftLayer{c.mux},
		MaxPool: 3,
		Timeout: 10 * time.Second,
		Logger:  hcl.Named("transport"),
	})
	c.raft, err = newRaft(rc, c.fsm, st, c.trans)
	if err != nil {
		c.trans.Close()
		return nil, err
	}
	c.mux.wg.Add(1)
	go c.mux.serve()
	c.spawn(func() { c.leadership(notify) })
	return c, nil
}

// newRaft starts raft; errors here are state that does not load, such as a
// snapshot that fails its checksum.
func newRaft(rc *raft.Config, f *fsm, st *store, trans raft.Transport) (r *raft.Raft, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: loading raft state from %s: %v", ErrCorruptStore, st.path, p)
		}
	}()
	r, err = raft.NewRaft(rc, f, st.bolt, st.bolt, st.snaps, trans)
	if err != nil {
		return nil, fmt.Errorf("%w: loading raft state from %s and %s: %v", ErrCorruptStore, st.path, st.snapDir, err)
	}
	return r, nil
}

// Close stops the member and waits for everything it started. The data
// directory keeps the log and snapshots for the next Open.
func (c *Cluster) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		c.closing = true
		c.mu.Unlock()
		c.stop()
		err := c.raft.Shutdown().Error()
		c.trans.Close()
		c.mux.close()
		c.wg.Wait()
		c.fsm.close()
		c.closeErr = errors.Join(err, c.store.close())
	})
	return c.closeErr
}

// NodeID returns this member's ID.
func (c *Cluster) NodeID() string { return c.cfg.NodeID }

// Addr returns the address peers dial for this member.
func (c *Cluster) Addr() string { return c.advertise }

func (c *Cluster) isLeader() bool { return c.raft.State() == raft.Leader }

// raftPeer reports whether the member id may talk raft with this one: a
// server of the raft configuration, so that a removed member's certificate
// no longer can; or, while this member has no configuration yet (it is
// being added, and the leader's first append brings one), any member of
// the CA.
func (c *Cluster) raftPeer(id pki.Identity) bool {
	servers := c.raft.GetConfiguration().Configuration().Servers // no wait: raft keeps it at hand
	for _, s := range servers {
		if string(s.ID) == id.ID {
			return true
		}
	}
	return len(servers) == 0
}

// self is the identity this member's own commands are stamped with: the one
// its certificate names (Open checked that they agree).
func (c *Cluster) self() pki.Identity { return c.cfg.TLS.Identity() }

// remaining is what raft's timeout arguments get: the context's time left.
func remaining(ctx context.Context) time.Duration {
	if dl, ok := ctx.Deadline(); ok {
		return max(time.Until(dl), time.Millisecond)
	}
	return maxRPCTimeout
}

// spawn runs fn in a goroutine that Close waits for; after Close has begun
// it runs nothing and returns false.
func (c *Cluster) spawn(fn func()) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return false
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		fn()
	}()
	return true
}

// wait returns f's result, or ErrNoQuorum if ctx ends first. The goroutine
// ends when raft resolves the future, which it does at the latest when it
// shuts down, before Close waits for it.
func (c *Cluster) wait(ctx context.Context, f raft.Future) error {
	done := make(chan error, 1)
	if !c.spawn(func() { done <- f.Error() }) {
		return ErrClosed
	}
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", ErrNoQuorum, ctx.Err())
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipTransferInProgress), errors.Is(err, raft.ErrEnqueueTimeout):
		// Refused before it entered the log: safe to try again elsewhere.
		return fmt.Errorf("%w: %v", errNotLeader, err)
	case errors.Is(err, raft.ErrRaftShutdown):
		return ErrClosed
	case errors.Is(err, raft.ErrLeadershipLost):
		return fmt.Errorf("%w: leadership lost before commit (the command may still commit): %v", ErrNoQuorum, err)
	}
	return err
}

// onLeader runs req on the leader: here, or forwarded. While there is no
// leader, or it cannot be reached, it tries again until ctx ends, and then
// returns ErrNoQuorum.
func (c *Cluster) onLeader(ctx context.Context, req rpcRequest) (rpcResponse, error) {
	backoff := 10 * time.Millisecond
	for {
		if c.ctx.Err() != nil {
			return rpcResponse{}, ErrClosed
		}
		var resp rpcResponse
		var err error
		fwd := req
		fwd.Forwarded = true
		if c.isLeader() {
			resp, err = c.leaderDo(ctx, req, c.self())
		} else if addr, id := c.raft.LeaderWithID(); addr != "" && string(id) != c.cfg.NodeID {
			resp, err = c.callLeader(ctx, string(addr), fwd)
		} else {
			// No leader known here (an election, or none of this member's
			// own while it cannot hear the leader): the others may know
			// one and reach it.
			resp, err = c.callLeader(ctx, "", fwd)
		}
		if !retryable(err) {
			return resp, err
		}
		select {
		case <-ctx.Done():
			return resp, fmt.Errorf("%w: %w (last: %v)", ErrNoQuorum, ctx.Err(), err)
		case <-c.ctx.Done():
			return resp, ErrClosed
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 200*time.Millisecond)
	}
}

// leaderDo serves req from the member from (this one, or the one whose
// certificate sent it) on this member, which believes it leads.
func (c *Cluster) leaderDo(ctx context.Context, req rpcRequest, from pki.Identity) (rpcResponse, error) {
	switch req.Op {
	case rpcApply:
		return c.applyLocal(ctx, req.Command, from)
	case rpcRead:
		if err := c.wait(ctx, c.raft.Barrier(remaining(ctx))); err != nil {
			return rpcResponse{}, err
		}
		s := c.fsm.current()
		return rpcResponse{Epoch: s.Epoch, Primary: s.Primary, State: &s}, nil
	case rpcJoin:
		return rpcResponse{}, c.addMember(ctx, req.Member, from)
	case rpcRemove:
		return rpcResponse{}, c.removeMember(ctx, req.Node, from)
	case rpcPing:
		return rpcResponse{}, nil
	}
	return rpcResponse{}, fmt.Errorf("%w: unknown rpc %q", ErrInvalidCommand, req.Op)
}

// applyLocal commits the command data on behalf of from: whatever sender
// the data names is replaced with from, whose certificate sent it, and the
// FSM authorizes the command by it.
func (c *Cluster) applyLocal(ctx context.Context, data []byte, from pki.Identity) (rpcResponse, error) {
	cmd, err := decodeCommand(data)
	if err != nil {
		return rpcResponse{}, err
	}
	cmd.Sender, cmd.SenderWitness = from.ID, from.Witness()
	if data, err = cmd.encode(); err != nil {
		return rpcResponse{}, err
	}
	f := c.raft.Apply(data, remaining(ctx))
	if err := c.wait(ctx, f); err != nil {
		return rpcResponse{}, err
	}
	r, ok := f.Response().(applyResult)
	if !ok {
		return rpcResponse{}, fmt.Errorf("unexpected FSM response %T", f.Response())
	}
	return rpcResponse{Epoch: r.Epoch, Primary: r.Primary}, r.Err
}

// submit commits cmd through the leader and returns the epoch after it.
func (c *Cluster) submit(ctx context.Context, cmd command) (rpcResponse, error) {
	data, err := cmd.encode()
	if err != nil {
		return rpcResponse{}, err
	}
	return c.onLeader(ctx, rpcRequest{Op: rpcApply, Command: data})
}

// State returns this member's copy of the volume state without asking
// anyone: it may lag the leader (compare Index), and it is what a data host
// checks on its hot path.
func (c *Cluster) State() VolumeState { return c.fsm.current() }

// Consistent returns this member's copy of the volume state once it is at
// least as new as the leader's at the time of the call: the leader commits
// a barrier, which proves it still leads a quorum, and answers with the
// index its state has applied; this member then waits until its own copy
// has applied that entry too. A member that restarted restores an old
// snapshot and replays the log only as it learns the commit index, so its
// State and Watch go through old epochs first; from the state Consistent
// returns on, they do not (they only move forward).
//
// Without quorum it returns ErrNoQuorum when ctx ends; if the leader
// answered but this member had not caught up by then, ErrBehind.
func (c *Cluster) Consistent(ctx context.Context) (VolumeState, error) {
	resp, err := c.onLeader(ctx, rpcRequest{Op: rpcRead})
	if err != nil {
		return VolumeState{}, err
	}
	if resp.State == nil {
		return VolumeState{}, errors.New("leader answered a read without a state")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(c.ctx, cancel)()
	s, err := c.fsm.waitIndex(ctx, resp.State.Index)
	switch {
	case err == nil:
		return s, nil
	case c.ctx.Err() != nil:
		return VolumeState{}, ErrClosed
	case errors.Is(err, ErrClosed):
		return VolumeState{}, err
	}
	return VolumeState{}, fmt.Errorf("%w: applied index %d, the leader's is %d: %w", ErrBehind, s.Index, resp.State.Index, err)
}

// Watch returns a channel holding the newest volume state of this member:
// the current one at once, then each change as this member applies it. A
// slow reader skips intermediate states, so compare epochs rather than
// count messages. The channel closes when ctx ends or the member closes.
func (c *Cluster) Watch(ctx context.Context) <-chan VolumeState { return c.fsm.watch(ctx) }

// Promote makes node primary in a new epoch and returns it. It is refused
// with ErrNotUpToDate unless node's disk is uptodate, or force is set: then
// reason is required and recorded, with a counter, in the state that status
// shows. A current primary is displaced and marked outdated; promoting the
// current primary again returns its epoch unchanged.
func (c *Cluster) Promote(ctx context.Context, node string, force bool, reason string) (Epoch, error) {
	if force {
		c.log.Warn("cluster: forced promotion requested", "node", node, "reason", reason)
	}
	resp, err := c.submit(ctx, command{Op: opPromote, Node: node, Force: force, Reason: reason})
	return resp.Epoch, err
}

// Demote ends node's tenure as primary of epoch; afterwards there is no
// primary, in a new epoch, which it returns.
func (c *Cluster) Demote(ctx context.Context, node string, epoch Epoch) (Epoch, error) {
	resp, err := c.submit(ctx, command{Op: opDemote, Node: node, Epoch: epoch})
	return resp.Epoch, err
}

// TransferPrimary is the last step of a swap: from, primary of epoch, has
// stopped accepting writes, drained them to to and flushed both, and now
// hands the role over. Both disks stay uptodate. It returns the new epoch.
func (c *Cluster) TransferPrimary(ctx context.Context, from, to string, epoch Epoch) (Epoch, error) {
	resp, err := c.submit(ctx, command{Op: opTransfer, By: from, Node: to, Epoch: epoch})
	return resp.Epoch, err
}

// Failover is the agent's hook: it moves the primary role away from
// failed, primary of epoch ("" if there is no primary), to the data host
// that is uptodate, and marks failed outdated. It succeeds only under
// quorum; it fails with ErrNotUpToDate if no other host is uptodate and
// with ErrStaleEpoch if the role moved since the caller looked (another
// agent won). It returns the new primary and epoch.
func (c *Cluster) Failover(ctx context.Context, failed string, epoch Epoch) (string, Epoch, error) {
	resp, err := c.submit(ctx, command{Op: opFailover, By: failed, Epoch: epoch})
	return resp.Primary, resp.Epoch, err
}

// MarkPeerOutdated is what this member, primary of epoch, commits when it
// loses peer and before it acknowledges another write. ErrNoQuorum means
// the commit did not happen before ctx ended: suspend I/O and call again
// (it is idempotent). ErrStaleEpoch or ErrNotPrimary mean this member is no
// longer primary: stop writing. ErrUnknownNode means peer was removed from
// the cluster; it cannot be promoted, so continuing alone is safe.
func (c *Cluster) MarkPeerOutdated(ctx context.Context, epoch Epoch, peer string) error {
	_, err := c.submit(ctx, command{Op: opMarkOutdated, By: c.cfg.NodeID, Node: peer, Epoch: epoch})
	return err
}

// SetDiskState records node's disk state as observed in epoch: uptodate
// when a resync completes (the only way out of outdated), inconsistent when
// one starts. Pass the epoch of the primary the resync copied from: if the
// role moved while it ran, the report is refused with ErrStaleEpoch. The
// primary's disk cannot be set below uptodate.
func (c *Cluster) SetDiskState(ctx context.Context, node string, d DiskState, epoch Epoch) error {
	_, err := c.submit(ctx, command{Op: opSetDisk, Node: node, Disk: d, Epoch: epoch})
	return err
}

// AckSeq records that node acknowledged replication sequence number seq in
// epoch. It costs a raft commit, so report it at milestones (disconnect,
// resync done, periodically), not per write.
func (c *Cluster) AckSeq(ctx context.Context, node string, epoch Epoch, seq uint64) error {
	_, err := c.submit(ctx, command{Op: opAckSeq, Node: node, Epoch: epoch, Seq: seq})
	return err
}

// ReportReady records whether node, a data host, can serve the directory,
// as its LDAP agent judges it, with a short detail for status (shortened
// to MaxReadyDetail bytes). It is a raft commit: agents report changes,
// not every check. ErrWitness and ErrUnknownNode refuse hosts without a
// volume.
func (c *Cluster) ReportReady(ctx context.Context, node string, ready bool, detail string) error {
	_, err := c.submit(ctx, command{Op: opReportReady, Node: node, Ready: ready, Detail: truncateUTF8(detail, MaxReadyDetail)})
	return err
}

// truncateUTF8 returns s cut to at most n bytes, at a rune boundary.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// Leader returns the raft leader as this member knows it ("" if none).
func (c *Cluster) Leader() (id, addr string) {
	a, i := c.raft.LeaderWithID()
	return string(i), string(a)
}

// Status is what `ldmirror cluster status` shows of one member.
type Status struct {
	NodeID string `json:"node_id"`
	// RaftState is Leader, Follower, Candidate or Shutdown.
	RaftState    string      `json:"raft_state"`
	Leader       string      `json:"leader"`
	LeaderAddr   string      `json:"leader_addr"`
	Term         uint64      `json:"term"`
	LastIndex    uint64      `json:"last_index"`
	AppliedIndex uint64      `json:"applied_index"`
	Volume       VolumeState `json:"volume"`
}

// Status returns this member's view, without a network round trip.
func (c *Cluster) Status() Status {
	leader, addr := c.Leader()
	return Status{
		NodeID: c.cfg.NodeID, RaftState: c.raft.State().String(),
		Leader: leader, LeaderAddr: addr,
		Term: c.raft.CurrentTerm(), LastIndex: c.raft.LastIndex(), AppliedIndex: c.raft.AppliedIndex(),
		Volume: c.fsm.current(),
	}
}

// Snapshot makes raft snapshot the state and truncate its log now, instead
// of at SnapshotThreshold: before a backup, or in tests.
func (c *Cluster) Snapshot(ctx context.Context) error {
	return c.wait(ctx, c.raft.Snapshot())
}

// leadership consumes raft's leadership notifications and, on a witness
// that leads, hands leadership to a data host: the primary's fencing
// commits then cost one round trip less, and the witness stays the cheap
// tie-breaker it is meant to be. Nothing depends on it for correctness.
func (c *Cluster) leadership(notify <-chan bool) {
	every := 10 * c.raftTiming()
	tick := time.NewTicker(every)
	defer tick.Stop()
	leader := false
	for {
		select {
		case <-c.ctx.Done():
			return
		case leader = <-notify:
			c.log.Info("cluster: leadership changed", "node", c.cfg.NodeID, "leader", leader)
		case <-tick.C:
		}
		if leader && c.cfg.Witness {
			c.handOff()
		}
	}
}

func (c *Cluster) raftTiming() time.Duration {
	if c.cfg.HeartbeatTimeout > 0 {
		return c.cfg.HeartbeatTimeout
	}
	return raft.DefaultConfig().HeartbeatTimeout
}

// handOff transfers leadership to the primary, or another data host, that
// answers a ping: a transfer to a dead host would stall commits until it
// times out.
func (c *Cluster) handOff() {
	ctx, cancel := context.WithTimeout(c.ctx, 5*c.raftTiming())
	defer cancel()
	members, err := c.Members(ctx)
	if err != nil {
		return
	}
	s := c.fsm.current()
	var targets []Member
	for _, m := range members {
		h, ok := s.Host(m.ID)
		if !ok || h.Witness || !m.Voter || m.ID == c.cfg.NodeID {
			continue
		}
		if m.ID == s.Primary {
			targets = append([]Member{m}, targets...)
		} else {
			targets = append(targets, m)
		}
	}
	for _, m := range targets {
		pctx, pcancel := context.WithTimeout(ctx, c.raftTiming())
		_, err := c.call(pctx, m.Addr, rpcRequest{Op: rpcPing})
		pcancel()
		if err != nil {
			continue
		}
		f := c.raft.LeadershipTransferToServer(raft.ServerID(m.ID), raft.ServerAddress(m.Addr))
		if err := c.wait(ctx, f); err != nil {
			c.log.Info("cluster: leadership hand-off failed", "to", m.ID, "err", err)
			continue
		}
		c.log.Info("cluster: handed leadership to a data host", "to", m.ID)
		return
	}
}
