package retrier

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// server is one backend and the session's connection to it.
type server struct {
	url  string
	slot chan struct{} // 1-buffered: held while a connection is opened or bound

	mu    sync.Mutex
	conn  *conn
	bound bool   // conn is bound as the identity of generation as
	as    uint64 // generation of the identity conn is bound as
}

func newServer(url string) *server {
	return &server{url: url, slot: make(chan struct{}, 1)}
}

// ready returns sv's connection if it is open and bound as generation gen.
func (sv *server) ready(gen uint64) *conn {
	sv.mu.Lock()
	defer sv.mu.Unlock()
	if sv.conn != nil && sv.conn.alive() && sv.bound && sv.as == gen {
		return sv.conn
	}
	return nil
}

// connect returns sv's connection, dialling it and binding it as the
// session's identity if needed. Connecting and binding are bounded by ctx
// (the call's deadline) and by AttemptTimeout; with split (another server
// follows in this round) by half the time left as well, so that a server
// that accepts connections and never answers cannot take a call's whole
// deadline from the other server (issue 18, defect 1).
func (s *Session) connect(ctx context.Context, sv *server, split bool) (*conn, error) {
	s.mu.Lock()
	gen := s.identity.gen
	s.mu.Unlock()
	if c := sv.ready(gen); c != nil {
		return c, nil
	}
	budget := s.cfg.AttemptTimeout
	if dl, ok := ctx.Deadline(); ok && split {
		budget = min(budget, time.Until(dl)/2)
	}
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	select {
	case sv.slot <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("connect %s: %w", sv.url, ctx.Err())
	}
	defer func() { <-sv.slot }()
	return s.open(ctx, sv)
}

// open dials and binds sv's connection; sv.slot is held.
func (s *Session) open(ctx context.Context, sv *server) (*conn, error) {
	sv.mu.Lock()
	c := sv.conn
	if c != nil && !c.alive() {
		sv.conn, sv.bound = nil, false
		defer c.close()
		c = nil
	}
	sv.mu.Unlock()
	if c == nil {
		var err error
		if c, err = dial(ctx, sv.url, &s.cfg); err != nil {
			return nil, err
		}
		sv.mu.Lock()
		sv.conn, sv.bound = c, false
		sv.mu.Unlock()
	}
	s.mu.Lock()
	id := identity{dn: s.identity.dn, password: slices.Clone(s.identity.password), gen: s.identity.gen}
	s.mu.Unlock()
	defer clear(id.password)
	sv.mu.Lock()
	bound := sv.bound && sv.as == id.gen
	sv.mu.Unlock()
	if bound {
		return c, nil
	}
	if err := c.bind(ctx, id.dn, id.password, s.cfg.AttemptTimeout); err != nil {
		if connectionError(err) || ctx.Err() != nil {
			sv.drop(c) // a bind cut short leaves the connection in an unknown state
		}
		return nil, err
	}
	sv.mu.Lock()
	if sv.conn == c {
		sv.bound, sv.as = true, id.gen
	}
	sv.mu.Unlock()
	return c, nil
}

// drop closes c if it is still sv's connection.
func (sv *server) drop(c *conn) {
	sv.mu.Lock()
	mine := sv.conn == c
	if mine {
		sv.conn, sv.bound = nil, false
	}
	sv.mu.Unlock()
	c.close()
}

func (sv *server) closeConn() {
	sv.mu.Lock()
	c := sv.conn
	sv.conn, sv.bound = nil, false
	sv.mu.Unlock()
	if c != nil {
		c.close()
	}
}

// Group is the state sessions with the same servers share: which server
// answered last, and the configuration errors already logged. The proxy
// gives all its client sessions one Group, so that after a failover a
// new client connection goes straight to the server that answers instead
// of trying the dead one first. The zero value is ready to use; a
// session without one has its own.
type Group struct {
	mu        sync.Mutex
	preferred int             // index of the server calls go to first
	probing   bool            // a session's failback probe runs
	logged    map[string]bool // errors logged once
}

func (g *Group) preferredIndex(n int) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.preferred >= n {
		return 0
	}
	return g.preferred
}

// logOnce logs a configuration error the first time the group sees it.
func (g *Group) logOnce(log *slog.Logger, err error) {
	g.mu.Lock()
	if g.logged == nil {
		g.logged = map[string]bool{}
	}
	seen := g.logged[err.Error()]
	g.logged[err.Error()] = true
	g.mu.Unlock()
	if !seen {
		log.Error("ldap server certificate does not verify; calls fail until the configuration is fixed", "err", err)
	}
}

// prefer makes server i the first choice after it answered a call, and
// after a failover starts a failback probe unless one runs.
func (s *Session) prefer(i int) {
	g := s.group
	g.mu.Lock()
	from := g.preferred
	g.preferred = i
	probe := i != 0 && s.cfg.FailbackInterval > 0 && !g.probing
	if probe {
		s.mu.Lock()
		probe = !s.closed
		if probe {
			g.probing = true
			s.wg.Add(1)
		}
		s.mu.Unlock()
	}
	g.mu.Unlock()
	if from != i {
		s.log.Warn("ldap failover", "from", s.servers[from].url, "to", s.servers[i].url)
	}
	if probe {
		go s.probePrimary()
	}
}

// probePrimary checks every FailbackInterval whether the primary answers a
// bind again; when it does, calls go back to it.
func (s *Session) probePrimary() {
	defer s.wg.Done()
	defer func() {
		s.group.mu.Lock()
		s.group.probing = false
		s.group.mu.Unlock()
	}()
	t := time.NewTicker(s.cfg.FailbackInterval)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		if s.group.preferredIndex(len(s.servers)) == 0 {
			return // another session failed back
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.DialTimeout)
		_, err := s.connect(ctx, s.servers[0], false)
		cancel()
		if err != nil {
			continue
		}
		s.group.mu.Lock()
		back := s.group.preferred != 0
		s.group.preferred = 0
		s.group.mu.Unlock()
		if back {
			s.log.Info("ldap primary answers again; failing back", "primary", s.servers[0].url)
		}
		return
	}
}
