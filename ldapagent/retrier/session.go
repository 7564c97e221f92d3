package retrier

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// Session is a handle on an LDAP session with a primary and a secondary
// server (docs/retrier.md). It is safe for concurrent use; calls share one
// connection per server.
type Session struct {
	cfg     Config
	log     *slog.Logger
	servers []*server // [0] primary, [1] secondary if configured
	gate    Gate      // calls in flight, for held signals and Close

	mu        sync.Mutex
	preferred int      // index of the server calls go to first
	identity  identity // what every connection binds as
	probing   bool     // a failback probe goroutine runs
	closed    bool

	done chan struct{} // closed by Close
	wg   sync.WaitGroup
}

// identity is what a session binds as; gen changes on every Bind so that a
// repeated bind with the same credentials is still sent.
type identity struct {
	dn, password string
	gen          uint64
}

// server is one backend and its shared connection.
type server struct {
	url string

	mu   sync.Mutex
	conn *ldap.Conn
	as   identity // what conn is bound as
}

// Status describes where a session sends its calls.
type Status struct {
	// Preferred is the URL of the server calls go to first.
	Preferred string
	// FailedOver is true while the preferred server is the secondary.
	FailedOver bool
}

// Open validates cfg, connects to the primary (or, failing that, the
// secondary) and binds as cfg.BindDN, retrying like a call until ctx's
// deadline or cfg.CallTimeout.
func Open(ctx context.Context, cfg Config) (*Session, error) {
	s, err := newSession(cfg)
	if err != nil {
		return nil, err
	}
	err = s.do(ctx, "open", false, func(ctx context.Context, c *ldap.Conn, _ bool) error { return nil })
	if err != nil {
		_ = s.Close()
		return nil, err
	}
	return s, nil
}

// OpenLazy is Open without the initial connection: the first call connects.
// The proxy uses it so that a client connection costs nothing until it sends
// an operation.
func OpenLazy(cfg Config) (*Session, error) { return newSession(cfg) }

func newSession(cfg Config) (*Session, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Session{
		cfg:      cfg,
		log:      cfg.Logger,
		identity: identity{dn: cfg.BindDN, password: cfg.BindPassword},
		done:     make(chan struct{}),
	}
	s.servers = append(s.servers, &server{url: cfg.Primary})
	if cfg.Secondary != "" {
		s.servers = append(s.servers, &server{url: cfg.Secondary})
	}
	if len(cfg.HoldSignals) > 0 {
		s.holdSignals()
	}
	return s, nil
}

// Status returns where calls go.
func (s *Session) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Status{Preferred: s.servers[s.preferred].url, FailedOver: s.preferred != 0}
}

// Close waits for calls in flight, closes the connections and stops the
// session's goroutines. Calls after Close fail with ErrClosed.
func (s *Session) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	close(s.done)
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.DrainTimeout)
	_ = s.gate.Wait(ctx)
	cancel()
	s.wg.Wait()
	for _, sv := range s.servers {
		sv.mu.Lock()
		if sv.conn != nil {
			_ = sv.conn.Close()
			sv.conn = nil
		}
		sv.mu.Unlock()
	}
	return nil
}

// attemptFunc runs one attempt of a call on a connection. retried is true if
// an earlier attempt of the same call failed with a retryable error.
type attemptFunc func(ctx context.Context, c *ldap.Conn, retried bool) error

// do runs a call: attempts on the preferred server, then the other, in
// rounds separated by backoff, until one completes or ctx (bounded by
// CallTimeout) ends.
func (s *Session) do(ctx context.Context, op string, write bool, fn attemptFunc) error {
	return s.run(ctx, op, write, true, fn)
}

// run is do; async=false runs attempts on the caller's goroutine (for
// searches, whose callbacks must not outlive the call).
//
// No server is tried once the deadline has passed, even if ctx does not say
// so yet: a context's deadline timer may fire late on a loaded machine, and
// a round of attempts with no time left fails at once, so looping on
// ctx.Err() alone spun (issue 18: 1599 attempts in 2.0 s).
func (s *Session) run(ctx context.Context, op string, write, async bool, fn attemptFunc) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.gate.Leave()
	ctx, cancel := context.WithTimeout(ctx, s.cfg.CallTimeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	start := time.Now()
	errs := make([]error, len(s.servers))
	attempts := 0
	retried := false
	backoff := s.cfg.MinBackoff
	for {
		first := s.preferredIndex()
		for k := range s.servers {
			i := (first + k) % len(s.servers)
			if ctx.Err() != nil || !time.Now().Before(deadline) {
				return s.allFailed(ctx, op, attempts, start, errs)
			}
			attempts++
			err := s.attempt(ctx, i, retried, async, fn)
			if err == nil {
				s.prefer(i)
				if retried {
					s.log.Info("ldap call retried", "op", op, "server", s.servers[i].url, "attempts", attempts, "elapsed", time.Since(start).Round(time.Millisecond))
				}
				return nil
			}
			if !Retryable(err, write) {
				return err
			}
			if ctx.Err() == nil || errs[i] == nil {
				errs[i] = err
			}
			retried = true
			s.log.Debug("ldap call failed, will retry", "op", op, "server", s.servers[i].url, "err", err)
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		backoff = min(2*backoff, s.cfg.MaxBackoff)
		last := false
		if left := time.Until(deadline); left <= wait {
			wait, last = max(left, 0), true
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			last = true
		case <-s.done:
			t.Stop()
			return ErrClosed
		case <-t.C:
		}
		t.Stop()
		if last {
			return s.allFailed(ctx, op, attempts, start, errs)
		}
	}
}

// allFailed is the error of a call whose deadline passed (or whose context
// ended) with every server failing; errs are the servers' last errors.
func (s *Session) allFailed(ctx context.Context, op string, attempts int, start time.Time, errs []error) error {
	cause := ctx.Err()
	if cause == nil {
		cause = context.DeadlineExceeded // the deadline passed before ctx noticed
	}
	e := &AllServersError{Op: op, Attempts: attempts, Elapsed: time.Since(start), Cause: cause}
	for i, sv := range s.servers {
		e.Servers = append(e.Servers, ServerError{URL: sv.url, Err: errs[i]})
	}
	s.log.Warn("ldap call failed on all servers", "op", op, "attempts", attempts, "elapsed", e.Elapsed.Round(time.Millisecond), "err", e)
	return e
}

func (s *Session) enter() error {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return ErrClosed
	}
	if !s.gate.Enter() {
		return ErrDraining
	}
	return nil
}

// attempt runs fn once on server i. With async, an attempt that outlives
// ctx goes on in the background (bounded by AttemptTimeout) and the caller
// gets ctx's error; the session's Close waits for it.
func (s *Session) attempt(ctx context.Context, i int, retried, async bool, fn attemptFunc) error {
	sv := s.servers[i]
	c, err := s.connect(ctx, sv)
	if err != nil {
		return err
	}
	if !async {
		err = fn(ctx, c, retried)
	} else {
		res := make(chan error, 1)
		s.gate.Enter() // cannot fail: the call holds the gate open
		go func() {
			defer s.gate.Leave()
			res <- fn(ctx, c, retried)
		}()
		select {
		case err = <-res:
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", sv.url, ctx.Err())
		}
	}
	if connectionError(err) {
		sv.drop(c)
	}
	return err
}

// connect returns sv's connection, dialling and binding as the session's
// identity if needed.
func (s *Session) connect(ctx context.Context, sv *server) (*ldap.Conn, error) {
	s.mu.Lock()
	id := s.identity
	s.mu.Unlock()
	sv.mu.Lock()
	defer sv.mu.Unlock()
	if sv.conn != nil && sv.conn.IsClosing() {
		_ = sv.conn.Close()
		sv.conn = nil
	}
	if sv.conn == nil {
		c, err := s.dial(ctx, sv.url)
		if err != nil {
			return nil, err
		}
		sv.conn, sv.as = c, identity{}
	}
	if sv.as != id {
		if err := bind(sv.conn, id); err != nil {
			if connectionError(err) {
				_ = sv.conn.Close()
				sv.conn = nil
			}
			return nil, err
		}
		sv.as = id
	}
	return sv.conn, nil
}

func (s *Session) dial(ctx context.Context, url string) (*ldap.Conn, error) {
	timeout := s.cfg.DialTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(dl))
	}
	if timeout <= 0 {
		return nil, fmt.Errorf("dial %s: %w", url, context.DeadlineExceeded)
	}
	opts := []ldap.DialOpt{ldap.DialWithDialer(&net.Dialer{Timeout: timeout})}
	if s.cfg.TLS != nil {
		opts = append(opts, ldap.DialWithTLSConfig(s.cfg.TLS))
	}
	c, err := ldap.DialURL(url, opts...)
	if err != nil {
		return nil, err
	}
	c.SetTimeout(s.cfg.AttemptTimeout)
	if s.cfg.StartTLS && len(url) > 7 && url[:7] == "ldap://" {
		if err := c.StartTLS(s.cfg.TLS); err != nil {
			_ = c.Close()
			return nil, fmt.Errorf("starttls %s: %w", url, err)
		}
	}
	return c, nil
}

// bind binds c as id; the anonymous identity binds with an empty name.
func bind(c *ldap.Conn, id identity) error {
	_, err := c.SimpleBind(&ldap.SimpleBindRequest{Username: id.dn, Password: id.password, AllowEmptyPassword: true})
	return err
}

// drop closes c if it is still sv's connection.
func (sv *server) drop(c *ldap.Conn) {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	if sv.conn == c {
		_ = c.Close()
		sv.conn = nil
	}
}

func (s *Session) preferredIndex() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.preferred
}

// prefer makes server i the first choice after it answered a call.
func (s *Session) prefer(i int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.preferred == i {
		return
	}
	s.log.Warn("ldap failover", "from", s.servers[s.preferred].url, "to", s.servers[i].url)
	s.preferred = i
	if i != 0 && s.cfg.FailbackInterval > 0 && !s.probing && !s.closed {
		s.probing = true
		s.wg.Add(1)
		go s.probePrimary()
	}
}

// probePrimary checks every FailbackInterval whether the primary answers a
// bind again; when it does, calls go back to it.
func (s *Session) probePrimary() {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		s.probing = false
		s.mu.Unlock()
	}()
	t := time.NewTicker(s.cfg.FailbackInterval)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.DialTimeout)
		_, err := s.connect(ctx, s.servers[0])
		cancel()
		if err != nil {
			continue
		}
		s.mu.Lock()
		if s.preferred != 0 {
			s.log.Info("ldap primary answers again; failing back", "primary", s.servers[0].url)
			s.preferred = 0
		}
		s.mu.Unlock()
		return
	}
}

// holdSignals catches cfg.HoldSignals; see Config.HoldSignals.
func (s *Session) holdSignals() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, s.cfg.HoldSignals...)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer signal.Stop(ch)
		for {
			var sig os.Signal
			select {
			case <-s.done:
				return
			case sig = <-ch:
			}
			s.gate.Close()
			n := s.gate.InFlight()
			ctx, cancel := context.WithTimeout(context.Background(), s.cfg.DrainTimeout)
			err := s.gate.Wait(ctx)
			cancel()
			if err != nil {
				s.log.Warn("signal: calls still in flight after drain timeout", "signal", sig, "drain", s.cfg.DrainTimeout)
			} else {
				s.log.Info("signal held until calls completed", "signal", sig, "calls", n)
			}
			if s.cfg.OnSignal != nil {
				s.cfg.OnSignal(sig)
				s.gate.Open()
				continue
			}
			signal.Stop(ch)
			if ss, ok := sig.(syscall.Signal); ok {
				_ = syscall.Kill(os.Getpid(), ss)
			}
			return
		}
	}()
}
