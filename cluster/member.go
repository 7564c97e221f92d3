package cluster

import (
	"context"
	"fmt"
	"time"
)

// MinRaftTimeout is the shortest heartbeat and election timeout a member
// accepts: below it a loaded host loses its leader to scheduling delays.
const MinRaftTimeout = 50 * time.Millisecond

// checkTiming refuses timings raft cannot work with.
func (c Config) checkTiming() error {
	for _, t := range []struct {
		name string
		d    time.Duration
	}{{"heartbeat timeout", c.HeartbeatTimeout}, {"election timeout", c.ElectionTimeout}} {
		if t.d != 0 && t.d < MinRaftTimeout {
			return fmt.Errorf("cluster config: raft %s %v is too short (at least %v)", t.name, t.d, MinRaftTimeout)
		}
	}
	if c.SnapshotInterval != 0 && c.SnapshotInterval < 5*time.Millisecond {
		return fmt.Errorf("cluster config: raft snapshot interval %v is too short (at least 5ms)", c.SnapshotInterval)
	}
	return nil
}

// BootstrapOrJoin makes this member a voter as its operator asked at start:
// bootstrap a new cluster, or join one through the member at join. A member
// that is a voter already (a restart) does neither. It returns an error
// that retrying cannot fix (a wrong secret, a third data host), or ctx's.
func (c *Cluster) BootstrapOrJoin(ctx context.Context, bootstrap bool, join string) error {
	switch {
	case bootstrap && join != "":
		return fmt.Errorf("%w: bootstrap and join exclude each other: bootstrap the first member, join the others", ErrInvalidCommand)
	case !bootstrap && join == "":
		return nil
	}
	members, err := c.Members(ctx)
	if err != nil {
		return err
	}
	// A join registers before it adds the voter, so a voter that joined is
	// registered; one that bootstrapped may have died between the two
	// steps, so unless its copy of the state shows it registered,
	// Bootstrap (idempotent) runs again.
	_, registered := c.State().Host(c.NodeID())
	for _, m := range members {
		if m.ID == c.NodeID() && m.Voter && (!bootstrap || registered) {
			c.log.Info("already a voter; --bootstrap/--join not needed", "node", m.ID)
			return nil
		}
	}
	if bootstrap {
		c.log.Info("bootstrapping a new cluster", "node", c.NodeID(), "addr", c.Addr())
		if err := c.Bootstrap(ctx); err != nil {
			return err
		}
		c.log.Info("bootstrapped", "node", c.NodeID())
		return nil
	}
	c.log.Info("joining", "node", c.NodeID(), "via", join)
	if err := c.Join(ctx, join); err != nil {
		return err
	}
	c.log.Info("joined", "node", c.NodeID(), "via", join)
	return nil
}
