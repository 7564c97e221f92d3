package retrier

import (
	"context"
	"errors"
	"fmt"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"
	"github.com/ldmirror/ldmirror/ldapagent/retrier/wire"
)

// Request is an operation for Session.Relay, already encoded: the proxy
// passes its clients' operations on as they arrived, without decoding and
// re-encoding them.
type Request struct {
	// Op is the protocolOp element of the LDAPMessage (RFC 4511 4.1.1):
	// the operation's tag, length and content. Any operation but bind,
	// unbind and abandon.
	Op []byte
	// Controls is the message's [0] Controls element, or nil.
	Controls []byte
	// Add and ModifyDN are the operation decoded, for the idempotent write
	// rules of an add and a modify DN; they must be set for those.
	Add      *ldap.AddRequest
	ModifyDN *ldap.ModifyDNRequest
}

// write reports whether the operation changes the directory: then
// unwillingToPerform (53), a read-only server's answer, is retried.
func (r *Request) write() bool {
	switch r.Op[0] {
	case wire.TagAddRequest, wire.TagModifyRequest, wire.TagDelRequest, wire.TagModifyDNRequest:
		return true
	}
	return false
}

func (r *Request) name() string {
	switch r.Op[0] {
	case wire.TagSearchRequest:
		return "search"
	case wire.TagAddRequest:
		return "add"
	case wire.TagModifyRequest:
		return "modify"
	case wire.TagDelRequest:
		return "delete"
	case wire.TagModifyDNRequest:
		return "modifydn"
	case wire.TagCompareRequest:
		return "compare"
	case wire.TagExtendedRequest:
		return "extended"
	}
	return fmt.Sprintf("operation 0x%02x", r.Op[0])
}

// Relay runs req like the other calls: on the preferred server, retried
// on the other one and with backoff until the call's deadline, with the
// idempotent write rules (docs/retrier.md).
//
// It returns the final response: a whole LDAPMessage as the server sent
// it, message ID included, or a success built by an idempotent write rule.
// A result such as invalidCredentials is a response, not an error; the
// error is for a call that did not get one: ErrAllServersFailed,
// ErrCertificate, ErrClosed, ErrDraining, or each's error.
//
// each, if not nil, gets every other response (search entries and
// references, intermediate responses) as it arrives, on the caller's
// goroutine and never after Relay returns; more reports that another
// response is already waiting, so that the caller can send both in one
// write. If a server fails in the middle of a search, the search is run
// again on the other server and entries each has had, by DN, are skipped.
// The caller owns the messages.
func (s *Session) Relay(ctx context.Context, req *Request, each func(msg []byte, more bool) error) ([]byte, error) {
	var final []byte
	var seen map[string]struct{}
	err := s.run(ctx, req.name(), req.write(), func(ctx context.Context, c *conn, retried bool) error {
		msg, err := s.exchange(ctx, c, req, retried, &seen, each)
		final = msg
		return err
	})
	var fe *finalError
	if errors.As(err, &fe) {
		err = fe.err
	}
	if err != nil {
		return nil, err
	}
	return final, nil
}

// exchange sends req on c and reads its responses up to the final one.
func (s *Session) exchange(ctx context.Context, c *conn, req *Request, retried bool, seen *map[string]struct{}, each func([]byte, bool) error) ([]byte, error) {
	x, err := c.send(ctx, req.Op, req.Controls)
	if err != nil {
		return nil, err
	}
	complete := false
	defer func() { c.finish(x, !complete) }()
	for {
		msg, err := c.recv(ctx, x, s.cfg.AttemptTimeout)
		if err != nil {
			return nil, err
		}
		m, err := wire.Split(msg)
		if err != nil {
			return nil, c.netError(err)
		}
		switch m.Op[0] {
		case wire.TagSearchEntry, wire.TagSearchReference, wire.TagIntermediate:
			if m.Op[0] == wire.TagSearchEntry && !firstTime(seen, m.Op) {
				continue
			}
			if each != nil {
				if err := each(msg, x.more); err != nil {
					return nil, &finalError{err}
				}
			}
			continue
		}
		complete = true
		return s.final(ctx, c, req, retried, msg, m)
	}
}

// firstTime records the DN of a search entry and reports whether it is
// new to the call.
func firstTime(seen *map[string]struct{}, op []byte) bool {
	dn, err := wire.First(op)
	if err != nil {
		return true
	}
	if *seen == nil {
		*seen = map[string]struct{}{}
	} else if _, ok := (*seen)[string(dn)]; ok {
		return false
	}
	(*seen)[string(dn)] = struct{}{}
	return true
}

// final decides what the final response m of req means: a result to
// retry (returned as its *ldap.Error), one an idempotent write rule turns
// into success, or the answer.
func (s *Session) final(ctx context.Context, c *conn, req *Request, retried bool, msg []byte, m wire.Message) ([]byte, error) {
	code, _, _, err := wire.Result(m.Op)
	if err != nil {
		return nil, c.netError(err)
	}
	if code != 0 && Retryable(ldap.NewError(uint16(code), nil), req.write()) {
		return nil, resultError(msg)
	}
	if code == 0 || !req.write() || !s.idempotent(retried) {
		return msg, nil
	}
	done, err := s.idempotentResult(ctx, c, req, code)
	if err != nil {
		return nil, err
	}
	if done {
		return successMessage(m.ID, ldapResponseTag(req.Op[0])), nil
	}
	return msg, nil
}

// idempotentResult applies the idempotent write rules (docs/retrier.md)
// to a write that failed with code; true means it succeeded after all.
func (s *Session) idempotentResult(ctx context.Context, c *conn, req *Request, code int) (bool, error) {
	switch {
	case req.Op[0] == wire.TagAddRequest && code == ldap.LDAPResultEntryAlreadyExists && req.Add != nil:
		return s.sameAsAdded(ctx, c, req.Add)
	case req.Op[0] == wire.TagDelRequest && code == ldap.LDAPResultNoSuchObject:
		return true, nil
	case req.Op[0] == wire.TagModifyDNRequest && code == ldap.LDAPResultNoSuchObject && req.ModifyDN != nil:
		// 32 also means a missing new superior: only a missing source
		// counts as done.
		_, err := s.readEntry(ctx, c, req.ModifyDN.DN)
		if ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject) {
			return true, nil
		}
		return false, err
	case req.Op[0] == wire.TagModifyDNRequest && code == ldap.LDAPResultEntryAlreadyExists && req.ModifyDN != nil:
		return s.sameAsTarget(ctx, c, req.ModifyDN)
	}
	return false, nil
}

// ldapResponseTag maps a request's tag to its response's tag number.
func ldapResponseTag(requestTag byte) ber.Tag {
	switch requestTag {
	case wire.TagAddRequest:
		return ldap.ApplicationAddResponse
	case wire.TagDelRequest:
		return ldap.ApplicationDelResponse
	case wire.TagModifyDNRequest:
		return ldap.ApplicationModifyDNResponse
	}
	return ldap.ApplicationModifyResponse
}

func (s *Session) idempotent(retried bool) bool { return retried || s.cfg.IdempotentWrites }
