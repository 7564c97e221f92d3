package retrier

import (
	"context"
	"errors"

	"github.com/go-ldap/ldap/v3"
	"github.com/ldmirror/ldmirror/ldapagent/retrier/wire"
)

// Bind binds the session as dn with password (empty dn: anonymous); see
// BindBytes.
func (s *Session) Bind(ctx context.Context, dn, password string) error {
	return s.BindBytes(ctx, dn, []byte(password))
}

// BindBytes binds the session as dn with password (both empty:
// anonymous). The identity is kept: every connection the session opens
// later, on either server, binds as it. The session keeps its own copy of
// password, zeroed when the identity changes and at Close; the caller may
// zero its own. A bind refused by the server (e.g. invalidCredentials) is
// returned unchanged and leaves the session anonymous, as LDAP does for a
// connection.
func (s *Session) BindBytes(ctx context.Context, dn string, password []byte) error {
	s.setIdentity(dn, password)
	err := s.run(ctx, "bind", false, func(context.Context, *conn, bool) error { return nil })
	if err != nil && !errors.Is(err, ErrAllServersFailed) {
		s.setIdentity("", nil)
	}
	return err
}

func (s *Session) setIdentity(dn string, password []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.identity.password)
	s.identity = identity{dn: dn, password: append([]byte(nil), password...), gen: s.identity.gen + 1}
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
// entries already passed to each (by DN) are skipped. An error from each
// ends the search and is returned; it is never retried. A result error such
// as sizeLimitExceeded is returned with the result.
func (s *Session) SearchEach(ctx context.Context, req *ldap.SearchRequest, each func(*ldap.Entry) error) (*ldap.SearchResult, error) {
	r, err := searchRequest(req)
	if err != nil {
		return nil, err
	}
	res := &ldap.SearchResult{}
	final, err := s.Relay(ctx, r, func(msg []byte, _ bool) error {
		return collect(msg, res, each)
	})
	if err != nil {
		return res, err
	}
	_, controls, derr := decodeMessage(final)
	if derr != nil {
		return res, ldap.NewError(ldap.ErrorNetwork, derr)
	}
	res.Controls = append(res.Controls, controls...)
	return res, resultError(final)
}

// collect passes a search entry to each and keeps a reference or an
// intermediate response's controls in res.
func collect(msg []byte, res *ldap.SearchResult, each func(*ldap.Entry) error) error {
	op, controls, err := decodeMessage(msg)
	if err != nil {
		return ldap.NewError(ldap.ErrorNetwork, err)
	}
	res.Controls = append(res.Controls, controls...)
	switch op.Tag {
	case ldap.ApplicationSearchResultEntry:
		e, err := decodeEntry(op)
		if err != nil {
			return ldap.NewError(ldap.ErrorNetwork, err)
		}
		return each(e)
	case ldap.ApplicationSearchResultReference:
		for _, u := range op.Children {
			res.Referrals = append(res.Referrals, u.Data.String())
		}
	}
	return nil
}

// Add adds an entry. If it is retried, or with Config.IdempotentWrites, an
// entry that already exists with exactly req's attributes is what an
// earlier attempt added, and the add succeeds; an entry that differs was
// written by someone else and the add fails with entryAlreadyExists (68),
// leaving it unchanged (docs/retrier.md, idempotent writes).
func (s *Session) Add(ctx context.Context, req *ldap.AddRequest) error {
	return s.write(ctx, addRequest(req))
}

// Modify modifies an entry. Retried modifies are not rewritten: replace
// changes are idempotent, but an add or delete of a value that an earlier
// attempt applied returns attributeOrValueExists (20) or noSuchAttribute (16).
func (s *Session) Modify(ctx context.Context, req *ldap.ModifyRequest) error {
	return s.write(ctx, modifyRequest(req))
}

// Delete deletes an entry. If it is retried, or with
// Config.IdempotentWrites, a missing entry (noSuchObject) is success
// (docs/retrier.md).
func (s *Session) Delete(ctx context.Context, req *ldap.DelRequest) error {
	return s.write(ctx, delRequest(req))
}

// ModifyDN renames or moves an entry. If it is retried, or with
// Config.IdempotentWrites, a missing source entry is success (docs/retrier.md), and
// so is an existing target whose attributes equal the source's.
func (s *Session) ModifyDN(ctx context.Context, req *ldap.ModifyDNRequest) error {
	return s.write(ctx, modifyDNRequest(req))
}

func (s *Session) write(ctx context.Context, r *Request) error {
	final, err := s.Relay(ctx, r, nil)
	if err != nil {
		return err
	}
	return resultError(final)
}

// Compare compares an attribute value of an entry.
func (s *Session) Compare(ctx context.Context, dn, attribute, value string) (bool, error) {
	final, err := s.Relay(ctx, compareRequest(dn, attribute, value), nil)
	if err != nil {
		return false, err
	}
	m, err := wire.Split(final)
	if err != nil {
		return false, ldap.NewError(ldap.ErrorNetwork, err)
	}
	switch code, _, _, _ := wire.Result(m.Op); code {
	case ldap.LDAPResultCompareTrue:
		return true, nil
	case ldap.LDAPResultCompareFalse:
		return false, nil
	}
	return false, resultError(final)
}

// Extended runs an extended operation (e.g. Who am I?, Password Modify).
// It is retried like a read: connection errors, busy and unavailable.
func (s *Session) Extended(ctx context.Context, req *ldap.ExtendedRequest) (*ldap.ExtendedResponse, error) {
	final, err := s.Relay(ctx, extendedRequest(req), nil)
	if err != nil {
		return nil, err
	}
	if err := resultError(final); err != nil {
		return nil, err
	}
	op, controls, err := decodeMessage(final)
	if err != nil {
		return nil, ldap.NewError(ldap.ErrorNetwork, err)
	}
	resp := &ldap.ExtendedResponse{Controls: controls}
	for _, c := range op.Children[min(3, len(op.Children)):] {
		switch c.Tag {
		case 10:
			resp.Name = c.Data.String()
		case 11:
			resp.Value = c
		}
	}
	return resp, nil
}
