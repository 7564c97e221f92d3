package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/ldmirror/ldmirror/ldapagent/retrier"
)

// Config configures a Server. The limits are described in docs/retrier.md
// (bounds).
type Config struct {
	// Backend configures the Session of every client connection. Its
	// BindDN/BindPassword are ignored: a connection starts anonymous and
	// binds as its client does. HoldSignals is ignored: the caller handles
	// signals by calling Shutdown.
	Backend retrier.Config
	// TLS enables StartTLS on the listening side. For LDAPS, pass a
	// tls.NewListener to Serve.
	TLS *tls.Config
	// RequireTLSForBind refuses a simple bind with a password, with
	// confidentialityRequired (13), on a connection that is neither TLS
	// (StartTLS or LDAPS) nor a unix socket.
	RequireTLSForBind bool
	// MaxConnections is the most client connections served at once; more
	// get a Notice of Disconnection (busy). Default 4096.
	MaxConnections int
	// MaxOperations is the most operations in flight on one connection;
	// more are answered busy (51). Default 64.
	MaxOperations int
	// MaxMessageSize is the largest request accepted, in bytes, from a
	// client that has bound with a DN and password; a client that sends a
	// larger one is disconnected. Default 4 MiB.
	MaxMessageSize int
	// MaxUnboundMessageSize is MaxMessageSize for a client that has not
	// (yet) bound with a DN and password. Default 256 KiB.
	MaxUnboundMessageSize int
	// IdleTimeout closes a client connection that sends nothing for this
	// long. Default 15 min; negative means never.
	IdleTimeout time.Duration
	// WriteTimeout bounds every write to a client: a client that does not
	// read what it asked for is dropped and its operations are abandoned
	// on the servers. Default 1 min, and never more than IdleTimeout.
	WriteTimeout time.Duration
	// SessionLifetime, if positive, ends a client connection this long
	// after its bind with a password, with a Notice of Disconnection once
	// its operations in flight are done: the password the proxy keeps to
	// replay the bind is then zeroed. Zero: no limit.
	SessionLifetime time.Duration
	// Logger receives connection events. Default slog.Default().
	Logger *slog.Logger
}

// Defaults.
const (
	DefaultMaxConnections        = 4096
	DefaultMaxOperations         = 64
	DefaultMaxMessageSize        = 4 << 20
	DefaultMaxUnboundMessageSize = 256 << 10
	DefaultIdleTimeout           = 15 * time.Minute
	DefaultWriteTimeout          = time.Minute
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("proxy: server closed")

// Server relays LDAP operations of its clients through retrier Sessions.
type Server struct {
	cfg Config
	log *slog.Logger
	ops retrier.Gate // operations in flight on all connections

	mu          sync.Mutex
	listeners   map[net.Listener]bool
	conns       map[*clientConn]bool
	closing     bool
	nextID      uint64
	refused     int       // connections refused over MaxConnections
	refusedLogs time.Time // when a refusal was last logged

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
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&cfg.MaxConnections, DefaultMaxConnections)
	def(&cfg.MaxOperations, DefaultMaxOperations)
	def(&cfg.MaxMessageSize, DefaultMaxMessageSize)
	def(&cfg.MaxUnboundMessageSize, DefaultMaxUnboundMessageSize)
	cfg.MaxUnboundMessageSize = min(cfg.MaxUnboundMessageSize, cfg.MaxMessageSize)
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	if cfg.IdleTimeout > 0 {
		cfg.WriteTimeout = min(cfg.WriteTimeout, cfg.IdleTimeout)
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
				time.Sleep(delay) // backoff of a failing accept, as net/http does
				continue
			}
			return err
		}
		delay = 0
		s.admit(nc)
	}
}

// admit serves nc, or refuses it when the server is closing or serves
// MaxConnections already.
func (s *Server) admit(nc net.Conn) {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		_ = nc.Close()
		return
	}
	if len(s.conns) >= s.cfg.MaxConnections {
		s.refused++
		logIt := time.Since(s.refusedLogs) >= time.Second
		if logIt {
			s.refusedLogs = time.Now()
		}
		n := s.refused
		s.mu.Unlock()
		if logIt {
			s.log.Warn("client connection refused: too many connections", "limit", s.cfg.MaxConnections, "refused", n)
		}
		refuse(nc, fmt.Sprintf("too many client connections (limit %d)", s.cfg.MaxConnections))
		return
	}
	s.nextID++
	c := newClientConn(s, nc, s.nextID)
	s.conns[c] = true
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		if c.serve() {
			s.forget(c)
		}
	}()
}

// forget removes an ended connection.
func (s *Server) forget(c *clientConn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// refuse sends a Notice of Disconnection (busy) on a connection that is
// not served and closes it. A new socket's send buffer is empty, so the
// write does not wait; the deadline is for a peer that resets it.
func refuse(nc net.Conn, why string) {
	_ = nc.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = nc.Write(message(0, extendedOp(result{code: codeBusy, message: why}, oidNoticeOfDisconnection, nil, false), nil))
	_ = nc.Close()
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
		c.abort()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return err
}
