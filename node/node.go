package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ldmirror/ldmirror/bitmap"
	"github.com/ldmirror/ldmirror/blockdev"
	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/export"
	"github.com/ldmirror/ldmirror/journal"
	"github.com/ldmirror/ldmirror/ldapagent/agent"
	"github.com/ldmirror/ldmirror/ldapagent/probe"
	"github.com/ldmirror/ldmirror/mirror"
	"github.com/ldmirror/ldmirror/pki"
	"github.com/ldmirror/ldmirror/replica"
	"github.com/ldmirror/ldmirror/resync"
	"github.com/ldmirror/ldmirror/scoreboard"
	"github.com/ldmirror/ldmirror/stage"
	"github.com/ldmirror/ldmirror/transport"
	"github.com/ldmirror/ldmirror/volume"
)

// Link is the state of the link to the peer, as status shows it.
type Link string

// Link states.
const (
	LinkConnected    Link = "connected"
	LinkConnecting   Link = "connecting"
	LinkDisconnected Link = "disconnected"
	LinkStandalone   Link = "standalone"
)

// Config is how one host runs its volume.
type Config struct {
	Dir    string       // volume directory (meta.json, volume.img)
	Role   cluster.Role // cluster.RolePrimary or cluster.RoleSecondary; ignored with a control plane, which names the role
	NodeID string
	Listen string // address the secondary accepts the primary on
	Peer   string // address the primary dials; empty: standalone
	// TLS is this host's key pair and the pair's CA (package pki): the
	// data link runs inside TLS 1.3, both hosts authenticated by their
	// certificates. Without it the link runs in plaintext, which
	// InsecurePlaintext must ask for, authenticated by Secret alone.
	TLS               *pki.Source
	InsecurePlaintext bool
	Secret            []byte
	// MountDir is where the primary's FUSE export is mounted (default Dir/export).
	MountDir string
	// Timeout bounds handshakes, acks and peer silence (default DefaultTimeout).
	Timeout time.Duration
	// Window is the number of writes in flight to the peer (default 64).
	Window int
	// ResyncRate limits resync traffic in bytes per second (0: no limit).
	ResyncRate int64
	// ResyncMinRate is what a resync slows to while the application
	// writes (0: it never yields).
	ResyncMinRate int64
	// ResyncChecksum compares checksums before every resync copy, not only
	// the first one after a crash.
	ResyncChecksum bool
	// ControlPlane, if set, decides who is primary in which epoch (see
	// controlplane.go); without it roles come from Role alone and nothing
	// protects against two primaries.
	ControlPlane ControlPlane
	// Probe, if its URL is set, is the directory server this host watches;
	// its health shows in status.
	Probe probe.Config
	// Mode is sync (a write returns once the peer has it) or async (once
	// it is in the local journal; the journal ships in order). Both hosts
	// of a pair run the same mode.
	Mode mirror.Mode
	// JournalSize is the async journal's capacity in bytes (default
	// journal.DefaultCapacity): how far the peer may lag.
	JournalSize int64
	// OnFull is what async mode does when the journal fills while the
	// peer is connected: throttle writers (default) or fall back to
	// logging mode and a bitmap resync.
	OnFull mirror.FullPolicy
	// NoResyncProtection takes every resync this host is the target of
	// unprotected: its volume is inconsistent until the resync completes
	// (docs/design.md, "A resync target that stays usable"). For
	// measurement, and to show that the tests can fail.
	NoResyncProtection bool
	// UnsafeInconsistent takes a resync this host has no room to stage
	// unprotected, rather than refuse it.
	UnsafeInconsistent bool
	// NoActivityLog skips write-intent logging (DRBD's al-updates no): the
	// out-of-sync map stays durable, but after a primary crash the blocks
	// written just before it are not resynced. For measurement and tests.
	NoActivityLog bool
	// Passthrough serves the backing file with no mirroring and no dirty
	// tracking: the frontend's own limit, for benchmarks only.
	Passthrough bool
	// Observer, if set, is told the data path's timings (metrics).
	Observer Observer
	Logger   *slog.Logger
}

// Observer receives the data path's timings, for metrics.
type Observer interface {
	// ObserveWrite: an application write through the primary's export
	// completed after d (acknowledged by the peer in sync mode).
	ObserveWrite(d time.Duration)
	// ObservePeerAck: the peer acknowledged a write d after it was sent.
	ObservePeerAck(d time.Duration)
}

func (c *Config) check() error {
	switch {
	case c.ControlPlane != nil:
		// The control plane names the role; a host must be able to run
		// either.
		if c.Listen == "" || c.Peer == "" {
			return errors.New("with a control plane a host needs both --listen (to serve as secondary) and --peer (to replicate as primary)")
		}
		if c.Passthrough {
			return errors.New("--passthrough is a benchmark baseline: run it without a control plane")
		}
	case c.Role == cluster.RolePrimary:
	case c.Role == cluster.RoleSecondary:
		if c.Listen == "" {
			return errors.New("a secondary needs --listen, the address the primary connects to")
		}
		if c.Passthrough {
			return errors.New("--passthrough is for a primary without a peer")
		}
	default:
		return fmt.Errorf("role must be %q or %q, got %q", cluster.RolePrimary, cluster.RoleSecondary, c.Role)
	}
	if c.Passthrough && c.Mode == mirror.ModeAsync {
		return errors.New("--passthrough has no peer to be asynchronous with: drop --mode async")
	}
	if c.Passthrough && c.Peer != "" {
		return errors.New("--passthrough serves the local file only: drop --peer")
	}
	if c.NodeID == "" {
		return errors.New("a node id is needed (--node-id)")
	}
	if c.MountDir == "" {
		c.MountDir = filepath.Join(c.Dir, volume.ExportDir)
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Node is one running data host. With a control plane its role follows the
// control plane: it runs a primary term while named primary and a secondary
// term otherwise (see role.go); without one it keeps Config.Role.
type Node struct {
	cfg  Config
	meta volume.Meta
	log  *slog.Logger
	tcfg transport.Config // Epoch is set at the start of each primary term

	dev *blockdev.FileDevice
	// stage is the volume as a secondary applies to it: a bitmap resync
	// is staged there until it completes (stage.go); stageTarget answers
	// the primary's Stage requests.
	stage       *stage.Area
	stageTarget *stage.Target
	lock        *os.File // flock held on the volume directory while running

	mu sync.Mutex // guards meta's mutable fields, the link state, the term's parts and what may change while it runs (SetResyncRates, SetProbe)
	// monitor probes the directory server (nil without a probe URL).
	monitor *probe.Monitor
	// target is the last progress the primary reported of a resync to
	// this host, and when it came.
	target   transport.Progress
	targetAt time.Time
	// attached are the loop devices Attach bound to the export.
	attached []string
	// role is the role of the current term; epoch the control plane's epoch
	// of a primary term (0 without a control plane).
	role  cluster.Role
	epoch cluster.Epoch
	// transition says what a role change waits for, for status.
	transition string
	termStart  chan struct{} // closed and replaced when a term's parts are ready
	// confirmed is the newest control-plane state the raft leader
	// confirmed (confirmState). The node ignores any older state: a member's
	// own copy lags, and after a restart replays old epochs.
	confirmed cluster.VolumeState

	// The primary term's parts.
	mirror *mirror.Mirror
	gate   *writeGate // what the export serves: the mirror, closed on demotion
	dirty  *bitmap.Set
	sb     *scoreboard.Scoreboard // durable out-of-sync map and activity log
	export *export.FUSE

	// The secondary term's parts.
	replica *replica.Replica
	ln      *transport.Listener
	applied *journal.AppliedFile // async: the highest journal position applied
	// behind holds the blocks this host knows may differ from the primary:
	// what its own scoreboard recorded when it last wrote as primary. The
	// primary asks for them (KindOutOfSync) and resyncs them too.
	behind *roaring.Bitmap

	link      Link
	peerNode  string
	peerGen   resync.Generations // what the connected peer holds (its Hello, then each hand-off)
	security  string             // how the primary's link is protected, for status
	refused   string             // why the last peer was refused, for status
	verifying bool
	verified  [2]uint64 // blocks done, total of the running verify
	abort     bool      // `resync --abort` runs: the primary's requests are refused

	resyncMu sync.Mutex // one resync (after connect or after verify) at a time
	// crashed: the primary did not stop cleanly and has not completed a
	// resync since; its recovered extents are mostly equal on the peer, so
	// its resync compares checksums first. Guarded by resyncMu after Open.
	crashed bool

	started   time.Time
	connected time.Time

	agent Agent // nil without an LDAP agent; set before Run
}

// Agent is the LDAP agent of this host (*agent.Agent), seen from the node:
// `ldmirror swap` goes through it, status shows it.
type Agent interface {
	Swap(ctx context.Context) (cluster.Epoch, error)
	Retry(ctx context.Context) error
	Status() agent.Status
}

// SetAgent makes a the host's LDAP agent. Call it before Run.
func (n *Node) SetAgent(a Agent) { n.agent = a }

// RequestSwap is `ldmirror swap`: through the LDAP agent if there is one
// (it stops the directory service first, then calls Swap), else Swap,
// refused while the volume is in use here unless force (ErrInUse).
func (n *Node) RequestSwap(ctx context.Context, force bool) (cluster.Epoch, error) {
	return n.swap(ctx, force)
}

// CheckDemote refuses to demote this host while its volume is in use,
// unless force (ErrInUse); any other host, and a host that is not
// primary, may be demoted.
func (n *Node) CheckDemote(node string, force bool) error {
	if node != n.cfg.NodeID || n.Role() != cluster.RolePrimary {
		return nil
	}
	return n.refuseInUse("demote", force)
}

// RetryAgent runs the LDAP agent's failed hook sequence again and returns
// the agent's state.
func (n *Node) RetryAgent(ctx context.Context) (agent.Status, error) {
	if n.agent == nil {
		return agent.Status{}, ErrNoAgent
	}
	if err := n.agent.Retry(ctx); err != nil {
		return agent.Status{}, err
	}
	return n.agent.Status(), nil
}

// Open loads the volume and prepares the host; Run starts it. Without a
// control plane the configured role's parts are set up here, so that their
// errors surface before Run.
func Open(cfg Config) (*Node, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if _, err := volume.Load(cfg.Dir); err != nil {
		return nil, err
	}
	lock, err := volume.Lock(cfg.Dir)
	if err != nil {
		return nil, err
	}
	meta, err := volume.Load(cfg.Dir) // again: another daemon may have changed it
	if err != nil {
		lock.Close()
		return nil, err
	}
	n := &Node{cfg: cfg, meta: meta, log: cfg.Logger, started: time.Now(), lock: lock, termStart: make(chan struct{})}
	n.tcfg = transport.Config{
		NodeID:     cfg.NodeID,
		VolumeUUID: meta.VolumeUUID,
		Size:       uint64(meta.Size),
		BlockSize:  uint32(meta.BlockSize),
		Window:     cfg.Window,
		Timeout:    cfg.Timeout,
		Logger:     cfg.Logger,
	}
	n.tcfg.Generations = func() [4]uint64 { return n.generations().Pack() }
	if cfg.Observer != nil {
		n.tcfg.AckLatency = cfg.Observer.ObservePeerAck
	}
	if err := n.linkSecurity(); err != nil {
		lock.Close()
		return nil, err
	}
	n.dev, err = blockdev.OpenFile(filepath.Join(cfg.Dir, volume.BackingFile), meta.Size)
	if err != nil {
		lock.Close()
		return nil, err
	}
	if err := n.openStage(); err != nil {
		n.dev.Close()
		lock.Close()
		return nil, err
	}
	n.link = LinkStandalone
	if cfg.ControlPlane == nil {
		if err := n.prepare(cfg.Role); err != nil {
			n.closeDisk()
			lock.Close()
			return nil, err
		}
	}
	return n, nil
}

// linkSecurity sets how the data link authenticates and protects its
// frames: TLS with this host's certificate, or, if asked for, plaintext
// with the shared secret.
func (n *Node) linkSecurity() error {
	cfg := &n.cfg
	switch {
	case cfg.TLS != nil && cfg.InsecurePlaintext:
		return errors.New("a TLS certificate and --insecure-plaintext-link exclude each other")
	case cfg.TLS != nil:
		id := cfg.TLS.Identity()
		if id.ID != cfg.NodeID || id.Role != pki.RoleData {
			return fmt.Errorf("the TLS certificate %s names %s; this host is data host %s (issue it one: ldmirror pki issue %s)", cfg.TLS.Files().Cert, id, cfg.NodeID, cfg.NodeID)
		}
		n.tcfg.ServerTLS, n.tcfg.ClientTLS, n.tcfg.PeerID = cfg.TLS.ServerConfig(), cfg.TLS.ClientConfig(), pki.DataHostID
	case cfg.InsecurePlaintext:
		if len(cfg.Secret) < transport.MinSecretLen {
			return fmt.Errorf("shared secret is %d bytes, need at least %d (--secret-file)", len(cfg.Secret), transport.MinSecretLen)
		}
		n.tcfg.InsecurePlaintext, n.tcfg.Secret = true, cfg.Secret
	case cfg.Role == cluster.RoleSecondary || cfg.Peer != "" || cfg.ControlPlane != nil:
		return errors.New("the data link needs this host's TLS certificate (ldmirror pki issue; docs/operations.md), or --insecure-plaintext-link with --secret-file")
	}
	return nil
}

// dialConfig is the link configuration the primary dials with: with a
// control plane, the secondary must be the other data host it knows.
func (n *Node) dialConfig() transport.Config {
	c := n.tcfg
	if n.cfg.ControlPlane != nil {
		c.Admit = func(peer transport.Hello) error {
			if want := n.peerID(); want != "" && peer.NodeID != want {
				return fmt.Errorf("%w: the host at %s is %s; the control plane knows %s as this volume's other data host", transport.ErrIdentity, n.cfg.Peer, peer.NodeID, want)
			}
			return nil
		}
	}
	return c
}

// prepare sets up the parts of a term in role.
func (n *Node) prepare(role cluster.Role) error {
	if role == cluster.RoleSecondary {
		return n.prepareSecondary()
	}
	return n.preparePrimary()
}

// generations returns the host's current generation identifiers.
func (n *Node) generations() resync.Generations {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.meta.Generations
}

// setGenerations persists new generation identifiers.
func (n *Node) setGenerations(g resync.Generations) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	old := n.meta.Generations
	n.meta.Generations = g
	if err := volume.Save(n.cfg.Dir, n.meta); err != nil {
		n.meta.Generations = old
		return fmt.Errorf("persist generations: %w", err)
	}
	n.log.Info("generations changed", "from", old, "to", g)
	return nil
}

// peerGenerations is what the connected peer holds.
func (n *Node) peerGenerations() resync.Generations {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.peerGen
}

func (n *Node) setPeerGenerations(g resync.Generations) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.peerGen = g
}

// setRefused records why the peer refused (nil: it did not) for status,
// and reports whether that changed.
func (n *Node) setRefused(err error) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	old := n.refused
	n.refused = ""
	if err != nil {
		n.refused = err.Error()
	}
	return n.refused != old
}

func (n *Node) setLink(state Link, peer string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.link, n.peerNode = state, peer
	if state == LinkConnected {
		n.connected = time.Now()
	}
}

// DefaultTimeout is the peer timeout when none is configured.
const DefaultTimeout = 5 * time.Second

// Errors of the operator's commands, which the control socket carries
// to the CLI by code (package ctl).
var (
	// ErrNoAgent reports a command for the LDAP agent on a host without one.
	ErrNoAgent = errors.New("no LDAP agent runs on this host (daemon --agent-config)")
	// ErrBusy reports a command that is already running.
	ErrBusy = errors.New("already running")
	// ErrNoControlPlane reports a command that needs the control plane on a
	// host without one (--cluster-bind).
	ErrNoControlPlane = errors.New("no control plane (--cluster-bind)")
)

// Run serves until ctx ends, then shuts down in order: writes in flight
// complete and are acknowledged by the peer before the link closes.
func (n *Node) Run(ctx context.Context) error {
	defer n.lock.Close()
	n.SetProbe(n.probeConfig())
	defer n.SetProbe(probe.Config{})
	if n.cfg.ControlPlane != nil {
		return errors.Join(n.followControlPlane(ctx), n.closeDisk())
	}
	var err error
	if n.cfg.Role == cluster.RoleSecondary {
		err = n.runSecondary(ctx, nil)
	} else {
		err = n.runPrimary(ctx, nil)
	}
	return errors.Join(err, n.closeDisk())
}

// Close releases what Open set up, for a Node that will not Run.
func (n *Node) Close() {
	n.mu.Lock()
	ln, sb := n.ln, n.sb
	n.mu.Unlock()
	if ln != nil {
		ln.Close()
	}
	if sb != nil {
		sb.Close()
	}
	n.closeDisk()
	n.lock.Close()
}

// Role is the role of the host's current term.
func (n *Node) Role() cluster.Role {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.role
}
