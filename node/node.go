package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/ldmirror/ldmirror/bitmap"
	"github.com/ldmirror/ldmirror/blockdev"
	"github.com/ldmirror/ldmirror/transport"
)

// Roles.
const (
	RolePrimary   = "primary"
	RoleSecondary = "secondary"
)

// Link states shown by status.
const (
	LinkConnected    = "connected"
	LinkConnecting   = "connecting"
	LinkDisconnected = "disconnected"
	LinkStandalone   = "standalone"
)

// Config is how one host runs its volume.
type Config struct {
	Dir    string // volume directory (meta.json, volume.img)
	Role   string // RolePrimary or RoleSecondary
	NodeID string
	Listen string // address the secondary accepts the primary on
	Peer   string // address the primary dials; empty: standalone
	Secret []byte
	// MountDir is where the primary's FUSE export is mounted (default Dir/export).
	MountDir string
	// Control is the path of the control socket (default Dir/control.sock).
	Control string
	// Timeout bounds handshakes, acks and peer silence (default DefaultTimeout).
	Timeout time.Duration
	// Window is the number of writes in flight to the peer (default 64).
	Window int
	// Passthrough serves the backing file with no mirroring and no dirty
	// tracking: the frontend's own limit, for benchmarks only.
	Passthrough bool
	Logger      *slog.Logger
}

func (c *Config) check() error {
	switch c.Role {
	case RolePrimary:
	case RoleSecondary:
		if c.Listen == "" {
			return errors.New("a secondary needs --listen, the address the primary connects to")
		}
		if c.Passthrough {
			return errors.New("--passthrough is for a primary without a peer")
		}
	default:
		return fmt.Errorf("role must be %q or %q, got %q", RolePrimary, RoleSecondary, c.Role)
	}
	if c.Passthrough && c.Peer != "" {
		return errors.New("--passthrough serves the local file only: drop --peer")
	}
	if c.NodeID == "" {
		return errors.New("a node id is needed (--node-id)")
	}
	if c.MountDir == "" {
		c.MountDir = filepath.Join(c.Dir, ExportDir)
	}
	if c.Control == "" {
		c.Control = filepath.Join(c.Dir, ControlFile)
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Node is one running data host.
type Node struct {
	cfg  Config
	meta Meta
	log  *slog.Logger
	tcfg transport.Config

	dev     *blockdev.FileDevice
	mirror  *blockdev.Mirror  // primary
	replica *blockdev.Replica // secondary
	ln      *transport.Listener
	export  *blockdev.Export
	control *controlServer

	mu        sync.Mutex
	link      string
	peerNode  string
	started   time.Time
	connected time.Time
}

// Open loads the volume and prepares the host; Run starts it.
func Open(cfg Config) (*Node, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	meta, err := LoadMeta(cfg.Dir)
	if err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, meta: meta, log: cfg.Logger, started: time.Now()}
	n.tcfg = transport.Config{
		NodeID:     cfg.NodeID,
		Secret:     cfg.Secret,
		VolumeUUID: meta.VolumeUUID,
		Size:       uint64(meta.Size),
		BlockSize:  uint32(meta.BlockSize),
		Window:     cfg.Window,
		Timeout:    cfg.Timeout,
		Logger:     cfg.Logger,
	}
	if cfg.Role == RoleSecondary || cfg.Peer != "" {
		if len(cfg.Secret) < transport.MinSecretLen {
			return nil, fmt.Errorf("shared secret is %d bytes, need at least %d (--secret-file)", len(cfg.Secret), transport.MinSecretLen)
		}
	}
	n.dev, err = blockdev.OpenFile(filepath.Join(cfg.Dir, BackingFile), meta.Size)
	if err != nil {
		return nil, err
	}
	n.link = LinkStandalone
	if cfg.Role == RoleSecondary {
		n.replica = blockdev.NewReplica(n.dev, n.log)
		n.link = LinkConnecting
		n.ln, err = transport.Listen(cfg.Listen, n.tcfg)
		if err != nil {
			n.dev.Close()
			return nil, fmt.Errorf("listen for the primary on %s: %w", cfg.Listen, err)
		}
		return n, nil
	}
	dirty, err := bitmap.New(meta.Size, meta.BlockSize)
	if err != nil {
		n.dev.Close()
		return nil, err
	}
	n.mirror = blockdev.NewMirror(n.dev, dirty, n.log)
	if cfg.Peer != "" {
		n.link = LinkConnecting
	}
	return n, nil
}

// Run serves until ctx ends, then shuts down in order: writes in flight
// complete and are acknowledged by the peer before the link closes.
func (n *Node) Run(ctx context.Context) error {
	var err error
	n.control, err = listenControl(n.cfg.Control, n)
	if err != nil {
		n.closeDevices()
		return err
	}
	defer n.control.Close()
	if n.cfg.Role == RoleSecondary {
		return n.runSecondary(ctx)
	}
	return n.runPrimary(ctx)
}

func (n *Node) runSecondary(ctx context.Context) error {
	n.log.Info("secondary ready", "listen", n.ln.Addr().String(), "volume", n.meta.VolumeUUID, "size", n.meta.Size)
	err := n.ln.Serve(ctx, n)
	n.replica.Wait()
	return errors.Join(err, n.dev.Flush(), n.dev.Close())
}

// Handle counts the link as connected and hands the request to the replica.
func (n *Node) Handle(req *transport.Request) { n.replica.Handle(req) }

func (n *Node) runPrimary(ctx context.Context) error {
	var dev blockdev.Device = n.mirror
	if n.cfg.Passthrough {
		dev = n.dev
		n.log.Warn("passthrough mode: no mirroring, no dirty tracking (benchmark baseline only)")
	}
	var err error
	n.export, err = blockdev.Mount(dev, n.cfg.MountDir, n.log)
	if err != nil {
		n.closeDevices()
		return err
	}
	n.log.Info("primary ready", "export", n.export.Path(), "peer", n.cfg.Peer, "volume", n.meta.VolumeUUID, "size", n.meta.Size)

	linkCtx, stopLink := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	if n.cfg.Peer != "" {
		wg.Add(1)
		go func() { defer wg.Done(); n.connectLoop(linkCtx) }()
	}
	<-ctx.Done()
	n.log.Info("shutting down: completing writes in flight")
	// Close the mirror first: it waits for in-flight writes to be acked (or
	// fail) while the link is still up, then flushes.
	var closeErr error
	if n.cfg.Passthrough {
		closeErr = n.dev.Close()
	} else {
		closeErr = n.mirror.Close()
	}
	stopLink()
	wg.Wait()
	if devs := blockdev.LoopDevicesOf(n.export.Path()); len(devs) > 0 {
		n.log.Warn("loop devices still attached to the export; detaching the mount lazily", "devices", devs)
	}
	return errors.Join(closeErr, n.export.UnmountLazy())
}

func (n *Node) closeDevices() {
	if n.ln != nil {
		n.ln.Close()
	}
	n.dev.Close()
}

// connectLoop keeps a session to the peer: dial with backoff, resync what
// went out of sync, replicate until the session breaks, repeat.
func (n *Node) connectLoop(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		s, err := transport.Dial(ctx, n.cfg.Peer, n.tcfg)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			n.log.Debug("connect to peer failed", "peer", n.cfg.Peer, "err", err)
			if errors.Is(err, transport.ErrAuth) || errors.Is(err, transport.ErrVolumeMismatch) || errors.Is(err, transport.ErrPeerRefused) {
				n.log.Error("peer refused: fix the configuration; retrying", "peer", n.cfg.Peer, "err", err)
				backoff = 5 * time.Second
			}
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		n.setLink(LinkConnected, s.Peer().NodeID)
		n.log.Info("peer connected", "peer", n.cfg.Peer, "node", s.Peer().NodeID)
		n.mirror.SetPeer(s)
		if err := n.mirror.Resync(ctx); err != nil && ctx.Err() == nil {
			n.log.Warn("resync stopped", "err", err)
		}
		select {
		case <-s.Done():
			n.log.Warn("peer link lost", "peer", n.cfg.Peer, "err", s.Err())
		case <-ctx.Done():
		}
		s.Close()
		n.mirror.SetPeer(nil)
		n.setLink(LinkDisconnected, "")
	}
}

func (n *Node) setLink(state, peer string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.link, n.peerNode = state, peer
	if state == LinkConnected {
		n.connected = time.Now()
	}
}

// DefaultTimeout is the peer timeout when none is configured.
const DefaultTimeout = 5 * time.Second
