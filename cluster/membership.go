package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/raft"
	"github.com/ldmirror/ldmirror/pki"
)

// Member is one voter of the raft configuration.
type Member struct {
	ID   string `json:"id"`
	Addr string `json:"addr"`
	// Witness is what the member registered as; a member that joined raft
	// but is not registered yet (or was removed) reports false.
	Witness bool `json:"witness,omitempty"`
	Voter   bool `json:"voter,omitempty"`
	Leader  bool `json:"leader,omitempty"`
}

// Bootstrap makes this member the first voter of a new cluster and
// registers it. The other hosts then Join. On a member that already has
// raft state it only makes sure the member is registered, so it is safe to
// repeat.
func (c *Cluster) Bootstrap(ctx context.Context) error {
	f := c.raft.BootstrapCluster(raft.Configuration{Servers: []raft.Server{
		{Suffrage: raft.Voter, ID: raft.ServerID(c.cfg.NodeID), Address: raft.ServerAddress(c.advertise)},
	}})
	if err := c.wait(ctx, f); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
		return fmt.Errorf("bootstrap: %w", err)
	}
	_, err := c.submit(ctx, command{Op: opRegister, Node: c.cfg.NodeID, Witness: c.cfg.Witness})
	if err != nil {
		return fmt.Errorf("bootstrap: register %s: %w", c.cfg.NodeID, err)
	}
	return nil
}

// Join asks the member at addr (any member: one that does not lead names
// the leader, which this host then asks) to register this host and add it
// as a voter. This host's certificate must be of the cluster's CA; it
// receives the log once the leader has added it.
func (c *Cluster) Join(ctx context.Context, addr string) error {
	req := rpcRequest{Op: rpcJoin, Member: Member{ID: c.cfg.NodeID, Addr: c.advertise, Witness: c.cfg.Witness}}
	backoff := 20 * time.Millisecond
	via := addr
	for {
		resp, err := c.call(ctx, via, req)
		if resp.Leader != "" && errors.Is(err, errNotLeader) {
			// Only the leader admits a member, authenticated by its own
			// connection: a relay cannot vouch for another's identity.
			via = resp.Leader
		}
		// Joining is idempotent (a second register and AddVoter of a
		// member change nothing), so a join the leader lost before it
		// committed (ErrNoQuorum) is tried again until ctx ends.
		if !retryable(err) && !errors.Is(err, ErrNoQuorum) {
			if err != nil {
				return fmt.Errorf("join via %s: %w", addr, err)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("join via %s: %w: %w (last: %v)", addr, ErrNoQuorum, ctx.Err(), err)
		case <-c.ctx.Done():
			return ErrClosed
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}

// addMember registers m in the FSM, then adds it to raft. Registering first
// lets the FSM refuse (a third data host, a changed kind) before raft is
// touched; both steps are idempotent, so a failed join is retried whole.
// Only m itself may ask, as the role its certificate names.
func (c *Cluster) addMember(ctx context.Context, m Member, from pki.Identity) error {
	if err := validNodeID(m.ID); err != nil {
		return err
	}
	if from.ID != m.ID || from.Witness() != m.Witness {
		return fmt.Errorf("%w: %s asked to add member %s (witness %t): a host joins as itself, in the role its certificate names", ErrNotAuthorized, from, m.ID, m.Witness)
	}
	if m.Addr == "" {
		return fmt.Errorf("%w: member %s has no address", ErrInvalidCommand, m.ID)
	}
	data, err := command{Op: opRegister, Node: m.ID, Witness: m.Witness}.encode()
	if err != nil {
		return err
	}
	if _, err := c.applyLocal(ctx, data, from); err != nil {
		return err
	}
	if err := c.wait(ctx, c.raft.AddVoter(raft.ServerID(m.ID), raft.ServerAddress(m.Addr), 0, remaining(ctx))); err != nil {
		return fmt.Errorf("add voter %s: %w", m.ID, err)
	}
	c.log.Info("cluster: member joined", "node", m.ID, "addr", m.Addr, "witness", m.Witness)
	return nil
}

// Remove takes a member out of the cluster: out of the volume state (the
// primary is refused with ErrIsPrimary) and out of raft. Removing a voter
// shrinks the quorum, so remove a failed host only to replace it.
func (c *Cluster) Remove(ctx context.Context, id string) error {
	_, err := c.onLeader(ctx, rpcRequest{Op: rpcRemove, Node: id})
	if err != nil {
		return fmt.Errorf("remove %s: %w", id, err)
	}
	return nil
}

func (c *Cluster) removeMember(ctx context.Context, id string, from pki.Identity) error {
	cf := c.raft.GetConfiguration()
	if err := c.wait(ctx, cf); err != nil {
		return err
	}
	inRaft := false
	for _, s := range cf.Configuration().Servers {
		inRaft = inRaft || string(s.ID) == id
	}
	s := c.fsm.current()
	if _, ok := s.Host(id); !ok && !inRaft {
		return fmt.Errorf("%w %q", ErrUnknownNode, id)
	}
	data, err := command{Op: opRemove, Node: id}.encode()
	if err != nil {
		return err
	}
	if _, err := c.applyLocal(ctx, data, from); err != nil {
		return err
	}
	if inRaft {
		if err := c.wait(ctx, c.raft.RemoveServer(raft.ServerID(id), 0, remaining(ctx))); err != nil {
			return err
		}
	}
	c.log.Info("cluster: member removed", "node", id)
	return nil
}

// Members returns the raft configuration as this member knows it.
func (c *Cluster) Members(ctx context.Context) ([]Member, error) {
	f := c.raft.GetConfiguration()
	if err := c.wait(ctx, f); err != nil {
		return nil, err
	}
	leader, _ := c.Leader()
	s := c.fsm.current()
	var out []Member
	for _, srv := range f.Configuration().Servers {
		h, _ := s.Host(string(srv.ID))
		out = append(out, Member{
			ID: string(srv.ID), Addr: string(srv.Address), Witness: h.Witness,
			Voter: srv.Suffrage == raft.Voter, Leader: string(srv.ID) == leader,
		})
	}
	return out, nil
}
