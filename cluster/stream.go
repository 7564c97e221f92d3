package cluster

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// How one TCP port carries two kinds of traffic, and how peers prove they
// belong to the cluster:
//
//  1. TLS 1.3 with a throwaway self-signed certificate. Certificates are not
//     verified: there is no PKI to manage. TLS gives confidentiality and
//     integrity; identity comes from step 2.
//  2. The dialer sends magic, a channel byte, its node ID and
//     HMAC-SHA256(secret, "dialer" label, exporter, channel, ID), where the
//     exporter is 32 bytes of the TLS session's exported keying material
//     (RFC 8446 §7.5). The acceptor checks it and answers a status byte and
//     HMAC-SHA256(secret, "acceptor" label, exporter, channel, ID), which the
//     dialer checks. A man-in-the-middle has a different TLS session with
//     each side, hence different exporters, so it cannot relay a proof; the
//     labels stop a peer from reflecting ours.
//  3. The channel byte routes the connection: raft's transport or the small
//     forwarding RPC (rpc.go).
const (
	authMagic    = "LDMCLU1\n"
	authExporter = "EXPORTER-ldmirror-cluster-auth"
	chanRaft     = 'R'
	chanRPC      = 'C'
	authOK       = 1
	authRefused  = 0
	macLen       = sha256.Size
)

// MinSecretLen is the shortest shared secret Open accepts.
const MinSecretLen = 16

// mux owns the cluster port: it accepts, authenticates, and routes
// connections, and tracks every connection it made or accepted so that Close
// can end them all.
type mux struct {
	ln        net.Listener
	advertise string
	nodeID    string
	secret    []byte
	timeout   time.Duration
	log       *slog.Logger
	serverTLS *tls.Config
	clientTLS *tls.Config
	rpc       func(net.Conn)

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

func newMux(ln net.Listener, advertise, nodeID string, secret []byte, timeout time.Duration, log *slog.Logger) (*mux, error) {
	cert, err := selfSigned()
	if err != nil {
		return nil, fmt.Errorf("cluster TLS certificate: %w", err)
	}
	ctx, stop := context.WithCancel(context.Background())
	return &mux{
		ctx: ctx, stop: stop, done: ctx.Done(),
		ln: ln, advertise: advertise, nodeID: nodeID, secret: secret, timeout: timeout, log: log,
		serverTLS: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13},
		// Peers are authenticated by the secret-bound MAC, not by a
		// certificate chain (see the comment at the top of this file).
		clientTLS: &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13},
		raftCh:    make(chan net.Conn),
		raftDone:  make(chan struct{}),
		conns:     make(map[*trackedConn]struct{}),
	}, nil
}

// selfSigned makes the throwaway certificate TLS needs.
func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "ldmirror-cluster"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
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
			m.log.Warn("cluster: accept failed", "err", err)
			select {
			case <-m.done:
				return
			case <-time.After(50 * time.Millisecond):
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
		raw.Close()
		return
	}
	ch, peer, err := m.accept(conn)
	if err != nil {
		m.log.Warn("cluster: refused connection", "remote", raw.RemoteAddr().String(), "peer", peer, "err", err)
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
		m.rpc(conn)
		conn.Close()
	}
}

// accept runs the acceptor's side of the handshake.
func (m *mux) accept(conn *trackedConn) (byte, string, error) {
	ctx, cancel := context.WithTimeout(m.ctx, m.timeout)
	defer cancel()
	tc := conn.Conn.(*tls.Conn)
	if err := conn.SetDeadline(time.Now().Add(m.timeout)); err != nil {
		return 0, "", err
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		return 0, "", fmt.Errorf("TLS handshake: %w", err)
	}
	ekm, err := exporter(tc)
	if err != nil {
		return 0, "", err
	}
	hdr := make([]byte, len(authMagic)+2)
	if _, err := io.ReadFull(conn, hdr); err != nil {
		return 0, "", fmt.Errorf("read hello: %w", err)
	}
	if string(hdr[:len(authMagic)]) != authMagic {
		return 0, "", errors.New("not an ldmirror cluster peer (bad magic)")
	}
	ch := hdr[len(authMagic)]
	rest := make([]byte, int(hdr[len(authMagic)+1])+macLen)
	if _, err := io.ReadFull(conn, rest); err != nil {
		return 0, "", fmt.Errorf("read hello: %w", err)
	}
	peer := string(rest[:len(rest)-macLen])
	if ch != chanRaft && ch != chanRPC {
		_, _ = conn.Write([]byte{authRefused})
		return 0, peer, fmt.Errorf("unknown channel %q", ch)
	}
	if !hmac.Equal(rest[len(rest)-macLen:], authMAC(m.secret, "dialer", ekm, ch, peer)) {
		_, _ = conn.Write([]byte{authRefused})
		return 0, peer, ErrAuth
	}
	reply := append([]byte{authOK}, authMAC(m.secret, "acceptor", ekm, ch, peer)...)
	if _, err := conn.Write(reply); err != nil {
		return 0, peer, err
	}
	return ch, peer, conn.SetDeadline(time.Time{})
}

// dial connects to a peer's cluster port on channel ch and authenticates.
func (m *mux) dial(ctx context.Context, addr string, ch byte) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, m.timeout)
	defer cancel()
	defer context.AfterFunc(m.ctx, cancel)()
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(raw, m.clientTLS)
	conn := m.track(tc)
	if conn == nil {
		raw.Close()
		return nil, ErrClosed
	}
	if err := m.dialAuth(ctx, conn, tc, addr, ch); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

func (m *mux) dialAuth(ctx context.Context, conn *trackedConn, tc *tls.Conn, addr string, ch byte) error {
	if dl, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(dl); err != nil {
			return err
		}
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("TLS handshake with %s: %w", addr, err)
	}
	ekm, err := exporter(tc)
	if err != nil {
		return err
	}
	hello := append([]byte(authMagic), ch, byte(len(m.nodeID)))
	hello = append(hello, m.nodeID...)
	hello = append(hello, authMAC(m.secret, "dialer", ekm, ch, m.nodeID)...)
	if _, err := conn.Write(hello); err != nil {
		return fmt.Errorf("send hello to %s: %w", addr, err)
	}
	reply := make([]byte, 1+macLen)
	if _, err := io.ReadFull(conn, reply[:1]); err != nil {
		return fmt.Errorf("read auth reply from %s: %w", addr, err)
	}
	if reply[0] != authOK {
		return fmt.Errorf("%w: %s refused our proof", ErrAuth, addr)
	}
	if _, err := io.ReadFull(conn, reply[1:]); err != nil {
		return fmt.Errorf("read auth reply from %s: %w", addr, err)
	}
	if !hmac.Equal(reply[1:], authMAC(m.secret, "acceptor", ekm, ch, m.nodeID)) {
		return fmt.Errorf("%w: %s gave a wrong proof", ErrAuth, addr)
	}
	return conn.SetDeadline(time.Time{})
}

func exporter(tc *tls.Conn) ([]byte, error) {
	cs := tc.ConnectionState()
	return cs.ExportKeyingMaterial(authExporter, nil, 32)
}

func authMAC(secret []byte, role string, ekm []byte, ch byte, id string) []byte {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte("ldmirror-cluster-v1 " + role + "\x00"))
	h.Write(ekm)
	h.Write([]byte{ch})
	h.Write([]byte(id))
	return h.Sum(nil)
}

// trackedConn removes itself from the mux's set when closed.
type trackedConn struct {
	net.Conn
	m    *mux
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
