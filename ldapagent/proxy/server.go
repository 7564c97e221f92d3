package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/ldmirror/ldmirror/ldapagent/retrier"
)

// Config configures a Server.
type Config struct {
	// Backend configures the Session of every client connection. Its
	// BindDN/BindPassword are ignored: a connection starts anonymous and
	// binds as its client does. HoldSignals is ignored: the caller handles
	// signals by calling Shutdown.
	Backend retrier.Config
	// TLS enables StartTLS on the listening side. For LDAPS, pass a
	// tls.NewListener to Serve.
	TLS *tls.Config
	// MaxMessageSize is the largest request accepted, in bytes; a client
	// that sends a larger one is disconnected. Default 4 MiB.
	MaxMessageSize int
	// IdleTimeout closes a client connection that sends nothing for this
	// long. Default 15 min; negative means never.
	IdleTimeout time.Duration
	// Logger receives connection events. Default slog.Default().
	Logger *slog.Logger
}

// Defaults.
const (
	DefaultMaxMessageSize = 4 << 20
	DefaultIdleTimeout    = 15 * time.Minute
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("proxy: server closed")

// Server relays LDAP operations of its clients through retrier Sessions.
type Server struct {
	cfg Config
	log *slog.Logger
	ops retrier.Gate // operations in flight on all connections

	mu        sync.Mutex
	listeners map[net.Listener]bool
	conns     map[*clientConn]bool
	closing   bool
	nextID    uint64

	wg sync.WaitGroup // connection goroutines
}

// New returns a Server; it validates cfg.Backend.
func New(cfg Config) (*Server, error) {
	b := cfg.Backend
	b.BindDN, b.BindPassword, b.HoldSignals, b.OnSignal = "", "", nil, nil
	if _, err := retrier.OpenLazy(b); err != nil {
		return nil, err
	}
	cfg.Backend = b
	if cfg.MaxMessageSize <= 0 {
		cfg.MaxMessageSize = DefaultMaxMessageSize
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Backend.Logger == nil {
		cfg.Backend.Logger = cfg.Logger
	}
	if cfg.Backend.Group == nil {
		// One failover state for all client sessions: after one fails
		// over, new clients go straight to the server that answers.
		cfg.Backend.Group = &retrier.Group{}
	}
	return &Server{cfg: cfg, log: cfg.Logger, listeners: map[net.Listener]bool{}, conns: map[*clientConn]bool{}}, nil
}

// Serve accepts clients on l until Shutdown; it then returns
// ErrServerClosed.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.listeners[l] = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()
	var delay time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; retrying", "err", err, "delay", delay)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			_ = nc.Close()
			continue
		}
		s.nextID++
		c := newClientConn(s, nc, s.nextID)
		s.conns[c] = true
		s.wg.Add(1)
		s.mu.Unlock()
		go func() {
			defer s.wg.Done()
			c.serve()
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// Shutdown stops accepting connections, refuses new operations with
// unavailable (52), waits until the operations in flight complete or ctx
// ends, then closes every connection. It returns ctx's error if operations
// were still in flight.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for l := range s.listeners {
		_ = l.Close()
	}
	s.mu.Unlock()
	s.ops.Close()
	n := s.ops.InFlight()
	err := s.ops.Wait(ctx)
	if err != nil {
		s.log.Warn("shutdown: operations still in flight after drain time", "operations", s.ops.InFlight())
	} else {
		s.log.Info("shutdown: operations in flight completed", "operations", n)
	}
	s.mu.Lock()
	for c := range s.conns {
		c.close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}

// clientConn is one client connection and its backend Session.
type clientConn struct {
	srv *Server
	id  uint64
	log *slog.Logger

	nc net.Conn
	r  *bufio.Reader

	wmu sync.Mutex // serialises writes; guards w
	w   *bufio.Writer

	mu      sync.Mutex
	sess    *retrier.Session
	pending map[int64]context.CancelFunc // operations in flight, for Abandon
	closed  bool

	ops sync.WaitGroup // operation goroutines
}

func newClientConn(s *Server, nc net.Conn, id uint64) *clientConn {
	return &clientConn{
		srv:     s,
		id:      id,
		log:     s.log.With("conn", id, "client", nc.RemoteAddr().String()),
		nc:      nc,
		r:       bufio.NewReader(nc),
		w:       bufio.NewWriter(nc),
		pending: map[int64]context.CancelFunc{},
	}
}

// close closes the network connection; serve then returns.
func (c *clientConn) close() {
	c.mu.Lock()
	c.closed = true
	nc := c.nc
	c.mu.Unlock()
	_ = nc.Close()
}

// serve reads requests until the client unbinds, disconnects or sends bad
// input, then waits for its operations and closes the Session.
func (c *clientConn) serve() {
	reason := c.readLoop()
	c.ops.Wait()
	c.mu.Lock()
	sess := c.sess
	c.mu.Unlock()
	if sess != nil {
		_ = sess.Close()
	}
	_ = c.nc.Close()
	if reason != nil {
		c.log.Warn("client connection closed", "reason", reason)
	} else {
		c.log.Debug("client connection closed")
	}
}

// readLoop returns nil for an orderly end and the reason otherwise.
func (c *clientConn) readLoop() (reason error) {
	defer func() {
		if r := recover(); r != nil {
			reason = fmt.Errorf("panic: %v", r)
		}
	}()
	for {
		if c.srv.cfg.IdleTimeout > 0 {
			_ = c.nc.SetReadDeadline(time.Now().Add(c.srv.cfg.IdleTimeout))
		}
		msg, err := readMessage(c.r, c.srv.cfg.MaxMessageSize)
		if err != nil {
			c.mu.Lock()
			closed := c.closed
			c.mu.Unlock()
			switch {
			case closed, errors.Is(err, io.EOF):
				return nil
			case errors.Is(err, errOversized), errors.Is(err, errMalformed):
				c.disconnect(err)
				return err
			}
			return fmt.Errorf("read: %w", err)
		}
		req, err := decodeRequest(msg)
		if err != nil {
			c.disconnect(err)
			return err
		}
		switch {
		case req.tag == tagUnbind:
			return nil
		case req.tag == tagAbandon:
			c.mu.Lock()
			if cancel := c.pending[req.abandon]; cancel != nil {
				cancel()
			}
			c.mu.Unlock()
		case req.tag == tagExtended && req.extended.name == oidStartTLS:
			if err := c.startTLS(req); err != nil {
				return err
			}
		case req.tag == tagBind:
			// Binds are serialised: RFC 4511 4.2.1 forbids other
			// operations while a bind is outstanding.
			c.ops.Wait()
			c.run(req)
		default:
			c.ops.Add(1)
			go func() {
				defer c.ops.Done()
				c.run(req)
			}()
		}
	}
}

// disconnect sends a Notice of Disconnection (protocolError).
func (c *clientConn) disconnect(reason error) {
	code := uint16(2) // protocolError
	_ = c.write(message(0, extendedOp(result{code: code, message: reason.Error()}, oidNoticeOfDisconnection, nil, false), nil))
}

func (c *clientConn) startTLS(req *request) error {
	c.ops.Wait()
	if c.srv.cfg.TLS == nil {
		return c.write(message(req.id, extendedOp(result{code: 2, message: "StartTLS not configured"}, "", nil, false), nil))
	}
	if _, ok := c.nc.(*tls.Conn); ok {
		return c.write(message(req.id, extendedOp(result{code: 1, message: "TLS already started"}, "", nil, false), nil))
	}
	if err := c.write(message(req.id, extendedOp(result{}, oidStartTLS, nil, false), nil)); err != nil {
		return err
	}
	if c.r.Buffered() > 0 {
		return errors.New("starttls: data after the request")
	}
	tc := tls.Server(c.nc, c.srv.cfg.TLS)
	_ = tc.SetDeadline(time.Now().Add(30 * time.Second))
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("starttls: %w", err)
	}
	_ = tc.SetDeadline(time.Time{})
	c.wmu.Lock()
	c.mu.Lock()
	c.nc, c.r, c.w = tc, bufio.NewReader(tc), bufio.NewWriter(tc)
	c.mu.Unlock()
	c.wmu.Unlock()
	return nil
}

// write sends one complete message.
func (c *clientConn) write(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if _, err := c.w.Write(b); err != nil {
		return err
	}
	return c.w.Flush()
}

// session returns the connection's Session, opening it on first use.
func (c *clientConn) session() (*retrier.Session, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sess == nil {
		s, err := retrier.OpenLazy(c.srv.cfg.Backend)
		if err != nil {
			return nil, err
		}
		c.sess = s
	}
	return c.sess, nil
}
