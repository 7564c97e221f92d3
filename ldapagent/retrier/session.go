package retrier

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"
)

// Session is a handle on an LDAP session with a primary and a secondary
// server (docs/retrier.md). It is safe for concurrent use; calls share one
// connection per server.
type Session struct {
	cfg     Config
	log     *slog.Logger
	group   *Group
	servers []*server // [0] primary, [1] secondary if configured
	gate    Gate      // calls in flight, for held signals and Close

	mu       sync.Mutex
	identity identity // what every connection binds as
	closed   bool

	done chan struct{} // closed by Close
	wg   sync.WaitGroup
}

// identity is what a session binds as. gen changes on every Bind so that
// a repeated bind with the same credentials is still sent. The password
// is the session's own copy, zeroed when it is replaced and at Close.
type identity struct {
	dn       string
	password []byte
	gen      uint64
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
	err = s.run(ctx, "open", false, func(context.Context, *conn, bool) error { return nil })
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
		group:    cfg.Group,
		identity: identity{dn: cfg.BindDN, password: []byte(cfg.BindPassword)},
		done:     make(chan struct{}),
	}
	if s.group == nil {
		s.group = &Group{}
	}
	s.servers = append(s.servers, newServer(cfg.Primary))
	if cfg.Secondary != "" {
		s.servers = append(s.servers, newServer(cfg.Secondary))
	}
	if len(cfg.HoldSignals) > 0 {
		s.holdSignals()
	}
	return s, nil
}

// Status returns where calls go.
func (s *Session) Status() Status {
	i := s.group.preferredIndex(len(s.servers))
	return Status{Preferred: s.servers[i].url, FailedOver: i != 0}
}

// Close waits for calls in flight (at most DrainTimeout), closes the
// connections, zeroes the bind password and stops the session's
// goroutines. Calls after Close fail with ErrClosed.
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
		sv.closeConn()
	}
	s.mu.Lock()
	clear(s.identity.password)
	s.identity = identity{gen: s.identity.gen + 1}
	s.mu.Unlock()
	return nil
}

// attemptFunc runs one attempt of a call on a connection. retried is true if
// an earlier attempt of the same call failed with a retryable error.
type attemptFunc func(ctx context.Context, c *conn, retried bool) error

// run runs a call: attempts on the preferred server, then the other, in
// rounds separated by backoff, until one completes or the deadline (ctx's,
// bounded by CallTimeout) passes.
//
// No server is tried once the deadline has passed, even if ctx does not say
// so yet: a context's deadline timer may fire late on a loaded machine, and
// a round of attempts with no time left fails at once, so looping on
// ctx.Err() alone spun (issue 18, defect 4: 1599 attempts in 2.0 s).
func (s *Session) run(ctx context.Context, op string, write bool, fn attemptFunc) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.gate.Leave()
	ctx, cancel := context.WithTimeout(ctx, s.cfg.CallTimeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	c := call{op: op, start: time.Now(), errs: make([]error, len(s.servers))}
	backoff := s.cfg.MinBackoff
	for {
		first := s.group.preferredIndex(len(s.servers))
		for k := range s.servers {
			i := (first + k) % len(s.servers)
			if ctx.Err() != nil || !time.Now().Before(deadline) {
				return s.allFailed(ctx, &c)
			}
			done, err := s.try(ctx, &c, i, k < len(s.servers)-1, write, fn)
			if done {
				return err
			}
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
			return s.allFailed(ctx, &c)
		}
	}
}

// call is the state of one call across its attempts.
type call struct {
	op       string
	start    time.Time
	attempts int
	retried  bool
	errs     []error // each server's last error
}

// try runs one attempt on server i; done reports that the call ends with
// err (nil on success). split: another server follows in this round.
func (s *Session) try(ctx context.Context, c *call, i int, split, write bool, fn attemptFunc) (done bool, err error) {
	c.attempts++
	err = s.attempt(ctx, i, split, c.retried, fn)
	if err == nil {
		s.prefer(i)
		if c.retried {
			s.log.Info("ldap call retried", "op", c.op, "server", s.servers[i].url, "attempts", c.attempts, "elapsed", time.Since(c.start).Round(time.Millisecond))
		}
		return true, nil
	}
	if errors.Is(err, ErrCertificate) {
		s.group.logOnce(s.log, err)
		return true, err
	}
	if !Retryable(err, write) {
		return true, err
	}
	if ctx.Err() == nil || c.errs[i] == nil {
		c.errs[i] = err
	}
	c.retried = true
	s.log.Debug("ldap call failed, will retry", "op", c.op, "server", s.servers[i].url, "err", err)
	return false, nil
}

// allFailed is the error of a call whose deadline passed (or whose context
// ended) with every server failing.
func (s *Session) allFailed(ctx context.Context, c *call) error {
	cause := ctx.Err()
	if cause == nil {
		cause = context.DeadlineExceeded // the deadline passed before ctx noticed
	}
	e := &AllServersError{Op: c.op, Attempts: c.attempts, Elapsed: time.Since(c.start), Cause: cause}
	for i, sv := range s.servers {
		e.Servers = append(e.Servers, ServerError{URL: sv.url, Err: c.errs[i]})
	}
	if !errors.Is(cause, context.Canceled) {
		s.log.Warn("ldap call failed on all servers", "op", c.op, "attempts", c.attempts, "elapsed", e.Elapsed.Round(time.Millisecond), "err", e)
	}
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

// attempt runs fn once on server i, on its connection (opened and bound
// first if needed). The attempt ends with ctx: a request in flight is then
// abandoned on the server (a write may still be applied: one more reason
// why retried writes are idempotent).
func (s *Session) attempt(ctx context.Context, i int, split, retried bool, fn attemptFunc) error {
	sv := s.servers[i]
	c, err := s.connect(ctx, sv, split)
	if err != nil {
		return err
	}
	err = fn(ctx, c, retried)
	if connectionError(err) {
		sv.drop(c)
	}
	return err
}
