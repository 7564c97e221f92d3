package retrier

import (
	"context"
	"errors"
	"sync"

	"github.com/go-ldap/ldap/v3"
)

// Bind binds the session as dn with password (empty dn: anonymous). The
// identity is kept: every connection the session opens later, on either
// server, binds as it. A bind refused by the server (e.g.
// invalidCredentials) is returned unchanged and leaves the session
// anonymous, as LDAP does for a connection.
func (s *Session) Bind(ctx context.Context, dn, password string) error {
	s.mu.Lock()
	s.identity = identity{dn: dn, password: password, gen: s.identity.gen + 1}
	s.mu.Unlock()
	err := s.do(ctx, "bind", false, func(context.Context, *ldap.Conn, bool) error { return nil })
	if err != nil && !errors.Is(err, ErrAllServersFailed) {
		s.mu.Lock()
		s.identity = identity{gen: s.identity.gen + 1}
		s.mu.Unlock()
	}
	return err
}

// Search runs a search and collects its results.
func (s *Session) Search(ctx context.Context, req *ldap.SearchRequest) (*ldap.SearchResult, error) {
	var entries []*ldap.Entry
	res, err := s.SearchEach(ctx, req, func(e *ldap.Entry) error {
		entries = append(entries, e)
		return nil
	})
	if res != nil {
		res.Entries = entries
	}
	return res, err
}

// SearchEach runs a search and calls each for every entry as it arrives.
// The returned result carries referrals and response controls, not entries.
// If a server fails mid-stream the search is rerun on the other one and
// entries already passed to each (by DN) are skipped; so is a search that a
// dying connection kept from being sent (see searchAttempt), which never
// passes for an empty result. An error from each
// ends the search and is returned; it is never retried. A result error such
// as sizeLimitExceeded is returned with the result.
func (s *Session) SearchEach(ctx context.Context, req *ldap.SearchRequest, each func(*ldap.Entry) error) (*ldap.SearchResult, error) {
	seen := make(map[string]bool)
	var res *ldap.SearchResult
	err := s.run(ctx, "search", false, false, func(ctx context.Context, c *ldap.Conn, _ bool) error {
		res = &ldap.SearchResult{}
		return searchAttempt(ctx, c, req, seen, res, each)
	})
	var fe *finalError
	if errors.As(err, &fe) {
		err = fe.err
	}
	return res, err
}

// searchAttempt runs req once on c: entries whose DN is not in seen are
// added to it and passed to each; referrals and controls go to res.
//
// go-ldap's SearchAsync ends a search on a connection that is already
// closing without sending it and without an error: the stream looks like a
// successful search with no results. That happens when the server dies
// between the moment the session hands out its connection and the moment
// the search starts (the connection's reader sees EOF and closes it in
// between). A stream that ends cleanly without a single item on a
// connection that is closing is therefore a connection error, to be
// retried, never a successful empty result. A stream that delivered items
// did start, and go-ldap reports every later failure as an error, so its
// clean end is the server's SearchResultDone even if the connection has
// closed since.
func searchAttempt(ctx context.Context, c *ldap.Conn, req *ldap.SearchRequest, seen map[string]bool, res *ldap.SearchResult, each func(*ldap.Entry) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	q := drain(c.SearchAsync(ctx, req, 64))
	defer q.wait()
	received := 0
	for {
		items, err, ok := q.take(ctx)
		received += len(items)
		for _, it := range items {
			if it.entry != nil && !seen[it.entry.DN] {
				seen[it.entry.DN] = true
				if err := each(it.entry); err != nil {
					return &finalError{err}
				}
			}
			if it.referral != "" {
				res.Referrals = append(res.Referrals, it.referral)
			}
			res.Controls = append(res.Controls, it.controls...)
		}
		if ok {
			continue
		}
		switch {
		case err != nil:
			return err
		case ctx.Err() != nil:
			return ctx.Err()
		case received == 0 && c.IsClosing():
			return errSearchNotSent
		}
		return nil
	}
}

// errSearchNotSent: see searchAttempt. ErrorNetwork makes it retryable and
// makes the session redial.
var errSearchNotSent = ldap.NewError(ldap.ErrorNetwork, errors.New("ldap: connection closed before the search was sent"))

// finalError marks an error that must not be retried.
type finalError struct{ err error }

func (e *finalError) Error() string { return e.err.Error() }
func (e *finalError) Unwrap() error { return e.err }

// Add adds an entry. If it is retried, or with Config.IdempotentWrites, an
// entry that already exists with exactly req's attributes is what an
// earlier attempt added, and the add succeeds; an entry that differs was
// written by someone else and the add fails with entryAlreadyExists (68),
// leaving it unchanged (docs/retrier.md, idempotent writes).
func (s *Session) Add(ctx context.Context, req *ldap.AddRequest) error {
	return s.do(ctx, "add", true, func(_ context.Context, c *ldap.Conn, retried bool) error {
		err := c.Add(req)
		if ldap.IsErrorWithCode(err, ldap.LDAPResultEntryAlreadyExists) && s.idempotent(retried) {
			same, serr := sameAsAdded(c, req)
			if serr != nil {
				return serr
			}
			if same {
				return nil
			}
		}
		return err
	})
}

// Modify modifies an entry. Retried modifies are not rewritten: replace
// changes are idempotent, but an add or delete of a value that an earlier
// attempt applied returns attributeOrValueExists (20) or noSuchAttribute (16).
func (s *Session) Modify(ctx context.Context, req *ldap.ModifyRequest) error {
	return s.do(ctx, "modify", true, func(_ context.Context, c *ldap.Conn, _ bool) error {
		return c.Modify(req)
	})
}

// Delete deletes an entry. If it is retried, or with
// Config.IdempotentWrites, a missing entry (noSuchObject) is success
// (docs/retrier.md).
func (s *Session) Delete(ctx context.Context, req *ldap.DelRequest) error {
	return s.do(ctx, "delete", true, func(_ context.Context, c *ldap.Conn, retried bool) error {
		err := c.Del(req)
		if ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject) && s.idempotent(retried) {
			return nil
		}
		return err
	})
}

// ModifyDN renames or moves an entry. If it is retried, or with
// Config.IdempotentWrites, a missing source entry is success (docs/retrier.md), and
// so is an existing target whose attributes equal the source's.
func (s *Session) ModifyDN(ctx context.Context, req *ldap.ModifyDNRequest) error {
	return s.do(ctx, "modifydn", true, func(_ context.Context, c *ldap.Conn, retried bool) error {
		err := c.ModifyDN(req)
		if err == nil || !s.idempotent(retried) {
			return err
		}
		switch {
		case ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject):
			// 32 also means a missing new superior: only a missing source
			// counts as done.
			_, rerr := readEntry(c, req.DN)
			if ldap.IsErrorWithCode(rerr, ldap.LDAPResultNoSuchObject) {
				return nil
			}
			if rerr != nil {
				return rerr
			}
		case ldap.IsErrorWithCode(err, ldap.LDAPResultEntryAlreadyExists):
			same, rerr := sameAsTarget(c, req)
			if rerr != nil {
				return rerr
			}
			if same {
				return nil
			}
		}
		return err
	})
}

// Compare compares an attribute value of an entry.
func (s *Session) Compare(ctx context.Context, dn, attribute, value string) (bool, error) {
	var ok bool
	err := s.do(ctx, "compare", false, func(_ context.Context, c *ldap.Conn, _ bool) error {
		var err error
		ok, err = c.Compare(dn, attribute, value)
		return err
	})
	return ok, err
}

// Extended runs an extended operation (e.g. Who am I?, Password Modify).
// It is retried like a read: connection errors, busy and unavailable.
func (s *Session) Extended(ctx context.Context, req *ldap.ExtendedRequest) (*ldap.ExtendedResponse, error) {
	var resp *ldap.ExtendedResponse
	err := s.do(ctx, "extended", false, func(_ context.Context, c *ldap.Conn, _ bool) error {
		var err error
		resp, err = c.Extended(req)
		return err
	})
	return resp, err
}

func (s *Session) idempotent(retried bool) bool { return retried || s.cfg.IdempotentWrites }

// searchQueue reads a go-ldap search response as fast as the server sends
// it. go-ldap drops a response it cannot hand over within the request
// timeout and blocks the whole connection meanwhile, so a slow consumer
// (a proxy client reading slowly) must not be on the read path: results wait
// here, in memory, instead.
type searchQueue struct {
	mu    sync.Mutex
	items []searchItem
	err   error
	end   bool
	wake  chan struct{} // 1-buffered: items or end changed
	ended chan struct{} // closed when the reader goroutine returns
}

type searchItem struct {
	entry    *ldap.Entry
	referral string
	controls []ldap.Control
}

func drain(r ldap.Response) *searchQueue {
	q := &searchQueue{wake: make(chan struct{}, 1), ended: make(chan struct{})}
	go func() {
		defer close(q.ended)
		for r.Next() {
			q.put(searchItem{entry: r.Entry(), referral: r.Referral(), controls: r.Controls()}, nil, false)
		}
		q.put(searchItem{}, r.Err(), true)
	}()
	return q
}

func (q *searchQueue) put(it searchItem, err error, end bool) {
	q.mu.Lock()
	if end {
		q.err, q.end = err, true
	} else {
		q.items = append(q.items, it)
	}
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// take returns the items queued so far; ok is false once the search ended
// (err is its error) or ctx is done.
func (q *searchQueue) take(ctx context.Context) (items []searchItem, err error, ok bool) {
	for {
		q.mu.Lock()
		items, q.items = q.items, nil
		end, err := q.end, q.err
		q.mu.Unlock()
		if len(items) > 0 || end {
			return items, err, !end
		}
		select {
		case <-q.wake:
		case <-ctx.Done():
			return nil, nil, false
		}
	}
}

// wait returns when the reader goroutine has ended; the caller cancels the
// search's context first.
func (q *searchQueue) wait() { <-q.ended }
