package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/hashicorp/raft"
	"github.com/ldmirror/ldmirror/pki"
)

// Files under Config.DataDir.
const (
	// StoreFile is the bolt database holding the raft log and stable store.
	StoreFile = "raft.db"
	// SnapshotDir holds raft's file snapshots.
	SnapshotDir = "snapshots"
)

// retainSnapshots is how many snapshots raft keeps: two, so a torn newest
// one leaves a good one behind.
const retainSnapshots = 2

// Config describes one member. Zero timing fields take raft's defaults
// (1 s heartbeat and election timeouts), which suit hosts on one LAN; tests
// use lower ones.
type Config struct {
	// NodeID names the member in raft and in the volume state: the host
	// name is a good choice. It must never be reused for another host.
	NodeID string
	// BindAddr is the host:port the cluster port listens on.
	BindAddr string
	// AdvertiseAddr is the host:port peers dial; default BindAddr (with the
	// port chosen, if BindAddr's port was 0).
	AdvertiseAddr string
	// DataDir holds the raft store and snapshots; it survives restarts.
	DataDir string
	// TLS is this member's certificate and the pair's CA (package pki):
	// members authenticate each other with them, and a command is
	// authorized by the member whose certificate sent it. The certificate
	// must name NodeID, as a witness if Witness is set.
	TLS *pki.Source
	// Witness members vote but hold no volume: the FSM never makes them
	// primary, and a witness that leads hands leadership to a data host.
	Witness bool
	Logger  *slog.Logger

	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration
	// SnapshotThreshold and SnapshotInterval say when raft snapshots the
	// FSM and truncates the log; TrailingLogs how many entries it keeps
	// after a snapshot for slow followers. Defaults 1024, raft's, 1024: the
	// state is tiny, so snapshots are cheap.
	SnapshotThreshold uint64
	SnapshotInterval  time.Duration
	TrailingLogs      uint64
	// DialTimeout bounds connecting and authenticating to a peer; default
	// 5 s.
	DialTimeout time.Duration
}

func (c Config) withDefaults() (Config, error) {
	if err := validNodeID(c.NodeID); err != nil {
		return c, fmt.Errorf("cluster config: %w", err)
	}
	if c.TLS == nil {
		return c, errors.New("cluster config: no TLS certificate (ldmirror pki issue)")
	}
	if id := c.TLS.Identity(); id.ID != c.NodeID || id.Witness() != c.Witness {
		want := pki.Identity{ID: c.NodeID, Role: pki.RoleData}
		if c.Witness {
			want.Role = pki.RoleWitness
		}
		return c, fmt.Errorf("cluster config: the TLS certificate %s names %s, this member is %s", c.TLS.Files().Cert, id, want)
	}
	if c.DataDir == "" {
		return c, errors.New("cluster config: no data directory")
	}
	if c.BindAddr == "" {
		return c, errors.New("cluster config: no bind address")
	}
	if err := c.checkTiming(); err != nil {
		return c, err
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 5 * time.Second
	}
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = 1024
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = 1024
	}
	return c, nil
}

func (c *Config) raftConfig(logger *hclogger, notify chan<- bool) *raft.Config {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(c.NodeID)
	rc.Logger = logger
	rc.NotifyCh = notify
	rc.SnapshotThreshold = c.SnapshotThreshold
	rc.TrailingLogs = c.TrailingLogs
	set := func(dst *time.Duration, v time.Duration) {
		if v > 0 {
			*dst = v
		}
	}
	set(&rc.HeartbeatTimeout, c.HeartbeatTimeout)
	set(&rc.ElectionTimeout, c.ElectionTimeout)
	set(&rc.LeaderLeaseTimeout, c.LeaderLeaseTimeout)
	set(&rc.CommitTimeout, c.CommitTimeout)
	set(&rc.SnapshotInterval, c.SnapshotInterval)
	return rc
}
