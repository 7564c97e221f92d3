package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ldmirror/ldmirror/bitmap"
	"github.com/ldmirror/ldmirror/blockdev"
	"github.com/ldmirror/ldmirror/ldapagent/probe"
	"github.com/ldmirror/ldmirror/resync"
	"github.com/ldmirror/ldmirror/scoreboard"
	"github.com/ldmirror/ldmirror/transport"
	"golang.org/x/sys/unix"
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
	// ResyncRate limits resync traffic in bytes per second (0: no limit).
	ResyncRate int64
	// ResyncChecksum compares checksums before every resync copy, not only
	// the first one after a crash.
	ResyncChecksum bool
	// ControlPlane, if set, decides who is primary in which epoch (see
	// controlplane.go); without it roles come from Role alone and nothing
	// protects against two primaries.
	ControlPlane ControlPlane
	// ControlRoutes, if set, is served under /cluster on the control socket.
	ControlRoutes http.Handler
	// Probe, if its URL is set, is the directory server this host watches;
	// its health shows in status.
	Probe probe.Config
	// NoActivityLog skips write-intent logging (DRBD's al-updates no): the
	// out-of-sync map stays durable, but after a primary crash the blocks
	// written just before it are not resynced. For measurement and tests.
	NoActivityLog bool
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
	control *ControlSocket
	monitor *probe.Monitor // nil without a probe URL

	dirty *bitmap.Set            // primary
	sb    *scoreboard.Scoreboard // primary: durable out-of-sync map and activity log
	lock  *os.File               // flock held on the volume directory while running

	mu        sync.Mutex // guards meta's mutable fields and the link state
	link      string
	peerNode  string
	refused   string // why the last peer was refused, for status
	verifying bool
	verified  [2]uint64 // blocks done, total of the running verify

	resyncMu sync.Mutex // one resync (after connect or after verify) at a time
	// crashed: the primary did not stop cleanly and has not completed a
	// resync since; its recovered extents are mostly equal on the peer, so
	// its resync compares checksums first. Guarded by resyncMu after Open.
	crashed bool

	started   time.Time
	connected time.Time
}

// Open loads the volume and prepares the host; Run starts it.
func Open(cfg Config) (*Node, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if _, err := LoadMeta(cfg.Dir); err != nil {
		return nil, err
	}
	lock, err := lockVolume(cfg.Dir)
	if err != nil {
		return nil, err
	}
	meta, err := LoadMeta(cfg.Dir) // again: another daemon may have changed it
	if err != nil {
		lock.Close()
		return nil, err
	}
	n := &Node{cfg: cfg, meta: meta, log: cfg.Logger, started: time.Now(), lock: lock}
	ok := false
	defer func() {
		if !ok {
			lock.Close()
		}
	}()
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
	n.tcfg.Generations = func() [4]uint64 { return n.generations().Pack() }
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
	if cfg.ControlPlane != nil && cfg.Role == RoleSecondary {
		n.tcfg.Admit = n.admitPrimary
	}
	if cfg.Role == RoleSecondary {
		n.replica = blockdev.NewReplica(n.dev, meta.BlockSize, n.log)
		n.link = LinkConnecting
		n.ln, err = transport.Listen(cfg.Listen, n.tcfg)
		if err != nil {
			n.dev.Close()
			return nil, fmt.Errorf("listen for the primary on %s: %w", cfg.Listen, err)
		}
		ok = true
		return n, nil
	}
	n.dirty, err = bitmap.New(meta.Size, meta.BlockSize)
	if err != nil {
		n.dev.Close()
		return nil, err
	}
	if cfg.Peer != "" {
		n.link = LinkConnecting
	}
	if cfg.Passthrough {
		n.mirror = blockdev.NewMirror(n.dev, n.dirty, nil, n.log)
	} else {
		if err := n.startPrimary(); err != nil {
			n.dev.Close()
			return nil, err
		}
		var intent blockdev.WriteIntent = n.sb
		if cfg.NoActivityLog {
			intent = outOfSyncOnly{n.sb}
			n.log.Warn("activity log off: after a crash of this primary, blocks written just before it may differ on the peer without being resynced")
		}
		n.mirror = blockdev.NewMirror(n.dev, n.dirty, intent, n.log)
		n.mirror.SetResyncRate(cfg.ResyncRate)
	}
	ok = true
	return n, nil
}

// lockVolume takes the volume directory for this process, so that a second
// daemon started on it fails before it touches anything.
func lockVolume(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, LockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("volume %s is in use by another ldmirror daemon", dir)
		}
		return nil, fmt.Errorf("lock volume %s: %w", dir, err)
	}
	return f, nil
}

// startPrimary opens the scoreboard and records that this host now writes
// as primary. The blocks the peer may miss are the scoreboard's out-of-sync
// map and, after a crash, every block of the activity log's hot extents.
func (n *Node) startPrimary() error {
	m := &n.meta
	geom := scoreboard.Geometry{VolumeSize: m.Size, BlockSize: m.BlockSize}
	path := filepath.Join(n.cfg.Dir, ScoreboardFile)
	sb, err := scoreboard.Open(path, geom, scoreboard.Options{})
	created := false
	if errors.Is(err, os.ErrNotExist) {
		sb, err = scoreboard.Create(path, geom, scoreboard.Options{})
		created = true
	}
	if err != nil {
		return err
	}
	if m.Generations.Discarded() {
		sb.Close()
		return errors.New("this host discarded its data (ldmirror resolve): run it as secondary until the peer resynced it")
	}
	behind := m.PrimaryActive || m.Generations.Bitmap != 0
	switch {
	case created && behind:
		// A volume from before the scoreboard existed: what the peer misses
		// is not known.
		n.sb = sb
		if err := n.markAllOutOfSync(); err != nil {
			sb.Close()
			return err
		}
		n.log.Warn("no scoreboard from the previous run: the whole volume will be resynced to the peer")
	default:
		rec := sb.Recovered()
		n.dirty.MarkOutOfSync(rec)
		if m.PrimaryActive {
			n.crashed = true
			n.log.Warn("the primary did not stop cleanly: resyncing the activity log's extents and the out-of-sync blocks, comparing checksums first",
				"blocks", rec.GetCardinality())
		}
	}
	if m.PrimaryActive || n.cfg.Peer == "" {
		// After a crash, or standalone, this host writes without its peer.
		m.Generations.StartTracking()
	}
	m.PrimaryActive = true
	if err := writeMeta(n.cfg.Dir, *m); err != nil {
		sb.Close()
		return err
	}
	n.sb = sb
	return nil
}

// markAllOutOfSync marks every block for a full resync, in memory and
// durably, so a crash before the resync ends does not shrink it.
func (n *Node) markAllOutOfSync() error {
	n.dirty.MarkAllOutOfSync()
	n.sb.MarkOutOfSync(n.dirty.OutOfSync())
	if err := n.sb.Sync(context.Background()); err != nil {
		return fmt.Errorf("record the full resync: %w", err)
	}
	return nil
}

// stopPrimary records a clean stop: the scoreboard persists the blocks the
// peer still misses, and if there are any this host stays in a generation
// of its own.
func (n *Node) stopPrimary() error {
	if err := n.sb.Close(); err != nil {
		return fmt.Errorf("close scoreboard: %w", err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.dirty.Dirty() > 0 {
		n.meta.Generations.StartTracking()
	}
	n.meta.PrimaryActive = false
	return writeMeta(n.cfg.Dir, n.meta)
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
	if err := writeMeta(n.cfg.Dir, n.meta); err != nil {
		n.meta.Generations = old
		return fmt.Errorf("persist generations: %w", err)
	}
	n.log.Info("generations changed", "from", old, "to", g)
	return nil
}

// Run serves until ctx ends, then shuts down in order: writes in flight
// complete and are acknowledged by the peer before the link closes.
func (n *Node) Run(ctx context.Context) error {
	defer n.lock.Close()
	var err error
	n.control, err = listenControl(n.cfg.Control, n)
	if err != nil {
		n.closeDevices()
		return err
	}
	defer n.control.Close()
	if n.cfg.Probe.URL != "" {
		n.monitor = probe.Start(n.cfg.Probe, func(h probe.Health) {
			if h.Up {
				n.log.Info("directory server up", "url", n.cfg.Probe.URL, "latency", h.LastLatency)
			} else {
				n.log.Warn("directory server down", "url", n.cfg.Probe.URL, "failures", h.ConsecutiveFailures, "err", h.LastError)
			}
		})
		defer n.monitor.Close()
	}
	if n.cfg.Role == RoleSecondary {
		return n.runSecondary(ctx)
	}
	return n.runPrimary(ctx)
}

func (n *Node) runSecondary(ctx context.Context) error {
	if n.cfg.ControlPlane != nil {
		watchCtx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); n.dropStalePrimary(watchCtx) }()
		defer func() { stop(); <-done }()
	}
	n.log.Info("secondary ready", "listen", n.ln.Addr().String(), "volume", n.meta.VolumeUUID, "size", n.meta.Size)
	err := n.ln.Serve(ctx, n)
	n.replica.Wait()
	return errors.Join(err, n.dev.Flush(), n.dev.Close())
}

// Handle hands data requests to the replica and adopts the primary's
// generations when it says this host caught up.
func (n *Node) Handle(req *transport.Request) {
	if req.Kind != transport.KindGeneration {
		n.replica.Handle(req)
		return
	}
	g := n.generations()
	g.SyncedFrom(resync.Unpack(req.Generations))
	req.Done(n.setGenerations(g))
}

func (n *Node) runPrimary(ctx context.Context) error {
	if n.cfg.ControlPlane != nil && !n.cfg.Passthrough {
		epoch, err := n.awaitPrimaryRole(ctx)
		if err != nil {
			n.closeDevices()
			return nil // stopped before it was named primary
		}
		n.tcfg.Epoch = uint64(epoch)
		n.mirror.SetFence(n.fencePeer(epoch))
	}
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
	if !n.cfg.Passthrough && closeErr == nil {
		closeErr = n.stopPrimary()
	}
	if devs := blockdev.LoopDevicesOf(n.export.Path()); len(devs) > 0 {
		n.log.Warn("loop devices still attached to the export; detaching the mount lazily", "devices", devs)
	}
	return errors.Join(closeErr, n.export.UnmountLazy())
}

func (n *Node) closeDevices() {
	if n.ln != nil {
		n.ln.Close()
	}
	if n.sb != nil {
		n.sb.Close()
	}
	n.dev.Close()
	n.lock.Close()
}

// connectLoop keeps a session to the peer: dial with backoff, decide the
// resync direction from both hosts' generations, resync what went out of
// sync, replicate until the session breaks, repeat.
func (n *Node) connectLoop(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		s, err := transport.Dial(ctx, n.cfg.Peer, n.tcfg)
		if err == nil {
			err = n.admit(s)
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			n.log.Debug("connect to peer failed", "peer", n.cfg.Peer, "err", err)
			if errors.Is(err, transport.ErrAuth) || errors.Is(err, transport.ErrVolumeMismatch) ||
				errors.Is(err, transport.ErrPeerRefused) || errors.Is(err, ErrPeerRefused) {
				n.log.Error("peer refused: the operator must act; retrying", "peer", n.cfg.Peer, "err", err)
				n.setRefused(err)
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
		n.setRefused(nil)
		n.setLink(LinkConnected, s.Peer().NodeID)
		n.log.Info("peer connected", "peer", n.cfg.Peer, "node", s.Peer().NodeID)
		n.mirror.SetPeer(s)
		n.catchUp(ctx, s)
		select {
		case <-s.Done():
			n.log.Warn("peer link lost", "peer", n.cfg.Peer, "err", s.Err())
		case <-ctx.Done():
		}
		s.Close()
		n.mirror.SetPeer(nil)
		n.setLink(LinkDisconnected, "")
		if ctx.Err() == nil {
			n.peerLost()
		}
	}
}

// ErrPeerRefused reports a peer this primary will not replicate to: its
// data is newer, diverged (split brain), or unrelated.
var ErrPeerRefused = errors.New("peer refused")

// admit decides, from the generations, whether this primary may bring the
// peer up to date, and closes the session if not.
func (n *Node) admit(s *transport.Session) error {
	local, peer := n.generations(), resync.Unpack(s.Peer().Generations)
	switch d := resync.Decide(local, peer); d {
	case resync.InSync, resync.LocalSource:
		return nil
	case resync.LocalSourceFull:
		n.log.Warn("the peer is older than the changes tracked here: resyncing the whole volume", "local", local, "peer", peer)
		if err := n.markAllOutOfSync(); err != nil {
			s.Close()
			return err
		}
		return nil
	default:
		s.Close()
		return fmt.Errorf("%w: %v (generations local %v, peer %v)", ErrPeerRefused, d, local, peer)
	}
}

// catchUp copies the out-of-sync blocks to the peer and, once it holds
// everything durably, tells it to adopt this host's generation.
func (n *Node) catchUp(ctx context.Context, s *transport.Session) {
	n.resyncMu.Lock()
	defer n.resyncMu.Unlock()
	if err := n.mirror.Resync(ctx, n.crashed || n.cfg.ResyncChecksum); err != nil {
		if ctx.Err() == nil {
			n.log.Warn("resync stopped", "err", err)
		}
		return
	}
	n.crashed = false
	local, peer := n.generations(), resync.Unpack(s.Peer().Generations)
	if n.dirty.Dirty() > 0 {
		return
	}
	if local.Bitmap == 0 && local == peer {
		n.markPeerUpToDate(ctx, s.Peer().NodeID) // in sync from the start
		return
	}
	if err := n.mirror.Flush(); err != nil {
		n.log.Warn("flush after resync failed", "err", err)
		return
	}
	synced := local
	synced.Synced()
	call, err := s.SubmitGeneration(synced.Pack())
	if err == nil {
		err = call.Wait()
	}
	if err == nil {
		err = n.setGenerations(synced)
	}
	if err != nil {
		n.log.Warn("could not record that the peer caught up", "err", err)
		return
	}
	n.markPeerUpToDate(ctx, s.Peer().NodeID)
}

// peerLost starts a new generation: from now on this host writes alone.
func (n *Node) peerLost() {
	g := n.generations()
	if g.StartTracking() {
		if err := n.setGenerations(g); err != nil {
			n.log.Error("could not persist the new generation", "err", err)
		}
	}
}

func (n *Node) setRefused(err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.refused = ""
	if err != nil {
		n.refused = err.Error()
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

// ErrNotPrimary reports a command only the primary can run.
var ErrNotPrimary = errors.New("only the primary can do this")

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
	if n.cfg.Role != RolePrimary || n.cfg.Passthrough {
		return res, ErrNotPrimary
	}
	n.mu.Lock()
	if n.verifying {
		n.mu.Unlock()
		return res, errors.New("a verify is already running")
	}
	n.verifying = true
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		n.verifying = false
		n.mu.Unlock()
	}()
	start := time.Now()
	differ, err := n.mirror.Verify(ctx, func(done, total uint64) {
		n.mu.Lock()
		n.verified = [2]uint64{done, total}
		n.mu.Unlock()
	})
	res.Blocks = n.dirty.Blocks()
	if differ != nil {
		res.OutOfSync = differ.GetCardinality()
		it := differ.Iterator()
		for it.HasNext() && len(res.FirstFound) < 100 {
			res.FirstFound = append(res.FirstFound, it.Next())
		}
	}
	if err == nil && res.OutOfSync > 0 {
		n.resyncMu.Lock()
		err = n.mirror.Resync(ctx, false) // verify just found them different
		n.resyncMu.Unlock()
		res.Repaired = err == nil
	}
	res.Seconds = time.Since(start).Seconds()
	n.log.Info("verify finished", "blocks", res.Blocks, "out_of_sync", res.OutOfSync, "repaired", res.Repaired, "err", err)
	return res, err
}

// outOfSyncOnly is the scoreboard without its activity log: writes are not
// announced, only those that failed to reach the peer are recorded.
type outOfSyncOnly struct{ *scoreboard.Scoreboard }

func (outOfSyncOnly) BeginWrite(context.Context, bitmap.Extent) error { return nil }

func (o outOfSyncOnly) EndWrite(e bitmap.Extent, inSync bool) {
	if !inSync {
		b := roaring.New()
		b.AddRange(uint64(e.First), uint64(e.Last)+1)
		o.MarkOutOfSync(b)
	}
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
	if n.cfg.Role != RolePrimary || n.cfg.Passthrough {
		return res, ErrNotPrimary
	}
	if !n.mirror.Status().Connected {
		return res, fmt.Errorf("resync: %w", transport.ErrDisconnected)
	}
	n.resyncMu.Lock()
	defer n.resyncMu.Unlock()
	if full {
		if err := n.markAllOutOfSync(); err != nil {
			return res, err
		}
	}
	start := time.Now()
	skipped := n.mirror.Status().ResyncSkip
	res.Blocks = n.dirty.OutOfSync().GetCardinality()
	err := n.mirror.Resync(ctx, checksum)
	res.Skipped = n.mirror.Status().ResyncSkip - skipped
	res.Seconds = time.Since(start).Seconds()
	n.log.Info("resync requested by the operator finished", "full", full, "checksum", checksum, "blocks", res.Blocks, "skipped", res.Skipped, "err", err)
	return res, err
}
