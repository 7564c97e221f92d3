package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/ldmirror/ldmirror/internal/ratelog"
	"github.com/ldmirror/ldmirror/pki"
)

// How one TCP port carries two kinds of traffic, and how peers prove who
// they are:
//
//  1. TLS 1.3 with mutual authentication: each member presents its own
//     certificate (package pki), verified against the pair's CA, which
//     names its node ID and role (data host or witness). A member that
//     cannot present one of the CA's certificates gets no further.
//  2. The dialer sends magic and a channel byte; the acceptor answers a
//     status byte.
//  3. The channel byte routes the connection: raft's transport, the small
//     forwarding RPC (rpc.go), or a tunnel. An RPC runs for the member its
//     certificate names: the leader stamps that identity into every
//     command it commits, and the FSM authorizes the command by it
//     (command.go).
//  4. A tunnel is for a member that cannot reach the leader but reaches
//     this member (docs/cluster.md, "Failure matrix": the link between the
//     data hosts cut while the secondary leads). This member, if the
//     dialer is in the raft configuration, connects to its own leader and
//     then only passes bytes both ways: the dialer runs steps 1 to 3 with
//     the leader through it, so the leader authenticates the dialer's
//     certificate itself, and the relay can neither read nor alter what
//     passes, nor speak for the dialer.
const (
	authMagic   = "LDMCLU2\n" // 2: certificates; 1 was the shared secret's MAC
	chanRaft    = 'R'
	chanRPC     = 'C'
	chanTunnel  = 'T'
	authOK      = 1
	authRefused = 0
)

// maxTunnels bounds the tunnels a member relays at once.
const maxTunnels = 16

// maxTunnelLife bounds a tunnel's life: one forwarded request, which the
// leader serves for at most maxRPCTimeout.
const maxTunnelLife = maxRPCTimeout + time.Minute

// maxHandshakes bounds the connections the cluster port authenticates at
// once; more are closed as soon as they are accepted.
const maxHandshakes = 16

// mux owns the cluster port: it accepts, authenticates, and routes
// connections, and tracks every connection it made or accepted so that Close
// can end them all.
type mux struct {
	ln        net.Listener
	advertise string
	timeout   time.Duration
	log       *slog.Logger
	serverTLS *tls.Config
	clientTLS *tls.Config
	rpc       func(net.Conn, pki.Identity)
	// raftPeer says whether the member a certificate names may talk raft
	// here; nil: every member of the CA.
	raftPeer func(pki.Identity) bool
	// tunnelTo returns where a tunnel the member from asked for goes (this
	// member's raft leader), or why there is none; nil: no tunnels.
	tunnelTo func(from pki.Identity) (string, error)
	tunnels  chan struct{} // one per tunnel relayed
	// cut, if set (tests only), makes the link to the cluster port at an
	// address unreachable, as a dropped route does: dials to it hang
	// until their deadline (see cutLink).
	cut atomic.Pointer[func(addr string) bool]

	slots    chan struct{} // one per handshake in progress
	shed     atomic.Uint64
	shedLog  *ratelog.Counter
	raftCh   chan net.Conn
	raftDone chan struct{}
	raftOnce sync.Once
	// ctx ends at close; every dial and handshake derives from it.
	ctx  context.Context
	stop context.CancelFunc
	done <-chan struct{}
	once sync.Once
	wg   sync.WaitGroup

	mu    sync.Mutex
	conns map[*trackedConn]struct{}
}

func newMux(ln net.Listener, advertise string, creds *pki.Source, timeout time.Duration, log *slog.Logger) *mux {
	ctx, stop := context.WithCancel(context.Background())
	return &mux{
		ctx: ctx, stop: stop, done: ctx.Done(),
		ln: ln, advertise: advertise, timeout: timeout, log: log,
		serverTLS: creds.ServerConfig(),
		clientTLS: creds.ClientConfig(),
		slots:     make(chan struct{}, maxHandshakes),
		shedLog:   ratelog.New(time.Second),
		tunnels:   make(chan struct{}, maxTunnels),
		raftCh:    make(chan net.Conn),
		raftDone:  make(chan struct{}),
		conns:     make(map[*trackedConn]struct{}),
	}
}

// serve accepts until close.
func (m *mux) serve() {
	defer m.wg.Done()
	for {
		conn, err := m.ln.Accept()
		if err != nil {
			select {
			case <-m.done:
				return
			default:
			}
			m.log.Warn("accept failed", "err", err)
			select {
			case <-m.done:
				return
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		select {
		case m.slots <- struct{}{}:
		default:
			m.shed.Add(1) // before the close: a client that sees it sees the count
			conn.Close()
			if n := m.shedLog.Note(); n > 0 {
				m.log.Warn("too many unauthenticated connections: closed at once", "closed", n, "limit", cap(m.slots), "remote", conn.RemoteAddr().String())
			}
			continue
		}
		m.wg.Add(1)
		go m.handle(conn)
	}
}

func (m *mux) handle(raw net.Conn) {
	defer m.wg.Done()
	conn := m.track(tls.Server(raw, m.serverTLS))
	if conn == nil {
		<-m.slots
		raw.Close()
		return
	}
	ch, peer, err := m.accept(conn)
	<-m.slots
	if err != nil {
		m.log.Warn("refused connection", "remote", raw.RemoteAddr().String(), "peer", peer.ID, "err", err)
		conn.Close()
		return
	}
	switch ch {
	case chanRaft:
		select {
		case m.raftCh <- conn: // raft's transport owns it now
		case <-m.raftDone:
			conn.Close()
		case <-m.done:
			conn.Close()
		}
	case chanRPC:
		m.rpc(conn, peer)
		conn.Close()
	case chanTunnel:
		m.relay(conn, peer)
	}
}

// relay serves a tunnel from the member from: it connects to this
// member's leader, answers the dialer whether it could, and passes bytes
// both ways until either side closes (or maxTunnelLife). It closes conn.
func (m *mux) relay(conn *trackedConn, from pki.Identity) {
	defer conn.Close()
	refuse := func(why string) {
		_ = conn.SetWriteDeadline(time.Now().Add(m.timeout))
		_, _ = conn.Write(append([]byte{authRefused, byte(len(why))}, why...))
	}
	select {
	case m.tunnels <- struct{}{}:
		defer func() { <-m.tunnels }()
	default:
		refuse(fmt.Sprintf("%d tunnels already", maxTunnels))
		return
	}
	if m.tunnelTo == nil {
		refuse("relays no tunnel")
		return
	}
	addr, err := m.tunnelTo(from)
	if err != nil {
		refuse(truncate(err.Error(), 255))
		return
	}
	ctx, cancel := context.WithTimeout(m.ctx, m.timeout)
	raw, err := m.dialTCP(ctx, addr)
	cancel()
	if err != nil {
		refuse(truncate(fmt.Sprintf("%s: %v", addr, err), 255))
		return
	}
	out := m.track(raw)
	if out == nil {
		raw.Close()
		return
	}
	defer out.Close()
	if _, err := conn.Write([]byte{authOK, 0}); err != nil {
		return
	}
	end := time.Now().Add(maxTunnelLife)
	_ = conn.SetDeadline(end)
	_ = out.SetDeadline(end)
	done := make(chan struct{}, 2)
	pass := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		// One direction ended: end both, so that neither waits for the
		// other's deadline.
		_ = dst.SetDeadline(time.Now())
		_ = src.SetDeadline(time.Now())
		done <- struct{}{}
	}
	go pass(out, conn)
	go pass(conn, out)
	<-done
	<-done
}

// truncate cuts s to at most n bytes.
func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// dialTCP opens the TCP connection to a cluster port at addr.
func (m *mux) dialTCP(ctx context.Context, addr string) (net.Conn, error) {
	if cut := m.cut.Load(); cut != nil && (*cut)(addr) {
		<-ctx.Done()
		return nil, fmt.Errorf("dial tcp %s: %w", addr, ctx.Err())
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// cutLink makes the cluster port at addr unreachable from this member
// (tests): dials to it hang until their deadline, and the connections this
// member dialed to it close. Cut on both members, that is their link down.
func (m *mux) cutLink(addr string) {
	cut := func(a string) bool { return a == addr }
	m.cut.Store(&cut)
	m.mu.Lock()
	var conns []*trackedConn
	for c := range m.conns {
		if c.to == addr {
			conns = append(conns, c)
		}
	}
	m.mu.Unlock()
	for _, c := range conns {
		if tc, ok := c.Conn.(*tls.Conn); ok {
			tc.NetConn().Close()
		}
		c.Close()
	}
}

// accept runs the acceptor's side of the handshake and returns the channel
// and the member the dialer's certificate names.
func (m *mux) accept(conn *trackedConn) (byte, pki.Identity, error) {
	ctx, cancel := context.WithTimeout(m.ctx, m.timeout)
	defer cancel()
	tc := conn.Conn.(*tls.Conn)
	if err := conn.SetDeadline(time.Now().Add(m.timeout)); err != nil {
		return 0, pki.Identity{}, err
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		return 0, pki.Identity{}, fmt.Errorf("TLS handshake: %w", authError(err))
	}
	peer, err := pki.PeerIdentity(tc.ConnectionState())
	if err != nil {
		return 0, peer, fmt.Errorf("%w: %w", ErrAuth, err)
	}
	hdr := make([]byte, len(authMagic)+1)
	if _, err := io.ReadFull(conn, hdr); err != nil {
		return 0, peer, fmt.Errorf("read hello: %w", err)
	}
	ch, err := parsePreamble(hdr)
	if err == nil && (ch == chanRaft || ch == chanTunnel) && m.raftPeer != nil && !m.raftPeer(peer) {
		err = fmt.Errorf("%w: %s is not in the raft configuration", ErrAuth, peer)
	}
	if err != nil {
		_, _ = conn.Write([]byte{authRefused})
		return 0, peer, err
	}
	if _, err := conn.Write([]byte{authOK}); err != nil {
		return 0, peer, err
	}
	return ch, peer, conn.SetDeadline(time.Time{})
}

// errPreamble refuses a connection that does not start like a member's.
var errPreamble = errors.New("not an ldmirror cluster peer")

// parsePreamble checks the dialer's magic and returns its channel.
func parsePreamble(b []byte) (byte, error) {
	if len(b) != len(authMagic)+1 || string(b[:len(authMagic)]) != authMagic {
		return 0, fmt.Errorf("%w (bad magic: a member of another ldmirror version?)", errPreamble)
	}
	ch := b[len(authMagic)]
	if ch != chanRaft && ch != chanRPC && ch != chanTunnel {
		return 0, fmt.Errorf("%w: unknown channel %q", errPreamble, ch)
	}
	return ch, nil
}

// authError marks a failed TLS handshake that is not a network failure as
// ErrAuth: a certificate one side refused, which retrying cannot fix.
func authError(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Op != "local error" && op.Op != "remote error" {
		return err // the network, not a TLS alert
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrAuth, err)
}

// dial connects to a peer's cluster port on channel ch and authenticates.
func (m *mux) dial(ctx context.Context, addr string, ch byte) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, m.timeout)
	defer cancel()
	defer context.AfterFunc(m.ctx, cancel)()
	raw, err := m.dialTCP(ctx, addr)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(raw, m.clientTLS)
	conn := m.track(tc)
	if conn == nil {
		raw.Close()
		return nil, ErrClosed
	}
	conn.to = addr
	if err := m.dialAuth(ctx, conn, tc, addr, ch); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// errNoTunnel is a relay's refusal to open a tunnel: it knows no leader,
// cannot reach it, or is busy. Nothing was sent through it.
var errNoTunnel = errors.New("no tunnel")

// dialVia connects to the leader of the member at relay through a tunnel
// (see relay) and authenticates with it on channel ch, end to end: the
// leader sees this member's certificate, as on a direct connection.
func (m *mux) dialVia(ctx context.Context, relay string, ch byte) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, m.timeout)
	defer cancel()
	defer context.AfterFunc(m.ctx, cancel)()
	outer, err := m.dial(ctx, relay, chanTunnel)
	if err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = outer.SetDeadline(dl)
	}
	var hdr [2]byte
	if _, err := io.ReadFull(outer, hdr[:]); err != nil {
		outer.Close()
		return nil, fmt.Errorf("tunnel through %s: %w", relay, err)
	}
	if hdr[0] != authOK {
		why := make([]byte, hdr[1])
		_, _ = io.ReadFull(outer, why)
		outer.Close()
		return nil, fmt.Errorf("%w through %s: %s", errNoTunnel, relay, why)
	}
	tc := tls.Client(outer, m.clientTLS)
	label := "the leader through " + relay
	if err := m.dialAuth(ctx, outer, tc, label, ch); err != nil {
		outer.Close()
		return nil, err
	}
	return tc, nil
}

func (m *mux) dialAuth(ctx context.Context, conn net.Conn, tc *tls.Conn, addr string, ch byte) error {
	if dl, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(dl); err != nil {
			return err
		}
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("TLS handshake with %s: %w", addr, authError(err))
	}
	if _, err := tc.Write(append([]byte(authMagic), ch)); err != nil {
		return fmt.Errorf("send hello to %s: %w", addr, authError(err))
	}
	// In TLS 1.3 the server verifies our certificate after our handshake
	// returned: its verdict arrives here, as this byte or as an alert.
	reply := make([]byte, 1)
	if _, err := io.ReadFull(tc, reply); err != nil {
		return fmt.Errorf("read auth reply from %s: %w", addr, authError(err))
	}
	if reply[0] != authOK {
		return fmt.Errorf("%w: %s refused the connection", ErrAuth, addr)
	}
	return conn.SetDeadline(time.Time{})
}

// healLinks undoes cutLink.
func (m *mux) healLinks() { m.cut.Store(nil) }

// trackedConn removes itself from the mux's set when closed.
type trackedConn struct {
	net.Conn
	m    *mux
	to   string // the address dialed; "" for a connection accepted
	once sync.Once
}

func (c *trackedConn) Close() error {
	var err error
	c.once.Do(func() {
		c.m.mu.Lock()
		delete(c.m.conns, c)
		c.m.mu.Unlock()
		err = c.Conn.Close()
	})
	return err
}

// track registers conn; it returns nil once the mux is closed.
func (m *mux) track(conn net.Conn) *trackedConn {
	c := &trackedConn{Conn: conn, m: m}
	m.mu.Lock()
	defer m.mu.Unlock()
	select {
	case <-m.done:
		return nil
	default:
	}
	m.conns[c] = struct{}{}
	return c
}

// close stops accepting, closes every connection and waits for the
// goroutines the mux started.
func (m *mux) close() {
	m.once.Do(func() {
		m.mu.Lock()
		m.stop()
		conns := make([]*trackedConn, 0, len(m.conns))
		for c := range m.conns {
			conns = append(conns, c)
		}
		m.mu.Unlock()
		m.ln.Close()
		for _, c := range conns {
			// Close the TLS layer's socket directly: tls.Conn.Close may
			// block sending close_notify to a peer that is not reading.
			if tc, ok := c.Conn.(*tls.Conn); ok {
				tc.NetConn().Close()
			}
			c.Close()
		}
	})
	m.wg.Wait()
}

// raftLayer is the raft.StreamLayer view of the mux.
type raftLayer struct{ m *mux }

var _ raft.StreamLayer = raftLayer{}

func (l raftLayer) Accept() (net.Conn, error) {
	select {
	case c := <-l.m.raftCh:
		return c, nil
	case <-l.m.raftDone:
		return nil, net.ErrClosed
	case <-l.m.done:
		return nil, net.ErrClosed
	}
}

// Close stops handing connections to raft; the port stays open for the RPC
// channel until the mux closes.
func (l raftLayer) Close() error {
	l.m.raftOnce.Do(func() { close(l.m.raftDone) })
	return nil
}

// Addr is the advertised address: raft puts it in its RPCs as ours.
func (l raftLayer) Addr() net.Addr { return advertiseAddr(l.m.advertise) }

func (l raftLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	// Derived from the mux's context, so a dial does not outlive it.
	ctx, cancel := context.WithTimeout(l.m.ctx, timeout)
	defer cancel()
	return l.m.dial(ctx, string(address), chanRaft)
}

type advertiseAddr string

func (a advertiseAddr) Network() string { return "tcp" }
func (a advertiseAddr) String() string  { return string(a) }
