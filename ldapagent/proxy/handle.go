package proxy

import (
	"context"
	"errors"
	"fmt"
	"time"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"
	"github.com/ldmirror/ldmirror/ldapagent/retrier"
)

// Result codes the proxy produces itself.
const (
	codeOperationsError      = 1
	codeProtocolError        = 2
	codeAuthMethodNotSupport = 7
	codeConfidentiality      = 13
	codeBusy                 = 51
	codeUnavailable          = 52
	codeOther                = 80
)

// run relays one operation and writes its responses. An abandoned
// operation gets no response (RFC 4511 4.11).
func (c *clientConn) run(req *request) {
	defer func() {
		c.mu.Lock()
		c.inflight--
		c.mu.Unlock()
	}()
	if !c.srv.ops.Enter() {
		c.reply(req, result{code: codeUnavailable, message: "proxy is shutting down"}, nil)
		return
	}
	defer c.srv.ops.Leave()
	ctx, cancel := context.WithCancel(context.Background())
	c.mu.Lock()
	c.pending[req.id] = cancel
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, req.id)
		c.mu.Unlock()
		cancel()
	}()
	sess, err := c.session()
	if err != nil {
		c.reply(req, result{code: codeOther, message: err.Error()}, nil)
		return
	}
	r := &retrier.Request{Op: req.op, Controls: req.controls, Add: req.add, ModifyDN: req.modifyDN}
	final, err := sess.Relay(ctx, r, func(msg []byte, more bool) error {
		return c.relay(req.id, msg, !more)
	})
	switch {
	case ctx.Err() != nil:
		return // abandoned, or the client is gone
	case err != nil:
		c.reply(req, resultOf(err), nil)
	default:
		_ = c.relay(req.id, final, true)
	}
}

// bind handles a bind request; no other operation is in flight.
func (c *clientConn) bind(req *request) {
	b := req.bind
	var r result
	switch {
	case b.version != 3:
		r = result{code: codeProtocolError, message: "only LDAPv3 is supported"}
	case b.sasl:
		r = result{code: codeAuthMethodNotSupport, message: saslRefusal(b.mech)}
	case c.srv.cfg.RequireTLSForBind && len(b.password) > 0 && !c.secure():
		r = result{code: codeConfidentiality, message: "a bind with a password needs TLS: use StartTLS, ldaps:// or ldapi://"}
	default:
		r = c.simpleBind(b)
	}
	c.reply(req, r, nil)
}

// simpleBind relays a simple bind: the session binds as the client on
// every server connection from now on.
func (c *clientConn) simpleBind(b *bindRequest) result {
	if !c.srv.ops.Enter() {
		return result{code: codeUnavailable, message: "proxy is shutting down"}
	}
	defer c.srv.ops.Leave()
	sess, err := c.session()
	if err != nil {
		return result{code: codeOther, message: err.Error()}
	}
	err = sess.BindBytes(context.Background(), b.name, b.password)
	authenticated := err == nil && b.name != "" && len(b.password) > 0
	c.mu.Lock()
	c.bound = authenticated
	c.expires = time.Time{}
	if authenticated && c.srv.cfg.SessionLifetime > 0 {
		c.expires = time.Now().Add(c.srv.cfg.SessionLifetime)
	}
	c.mu.Unlock()
	return resultOf(err)
}

// saslRefusal says why a SASL bind is refused. The proxy replays a
// client's bind on every backend connection it opens, which needs the
// credentials; SASL mechanisms either do not give them to the proxy
// (EXTERNAL: the server would see the proxy's own socket credentials or
// certificate, not the client's) or bind them to one connection
// (DIGEST-MD5, GSSAPI, SCRAM).
func saslRefusal(mech string) string {
	if mech == "EXTERNAL" {
		return "SASL EXTERNAL is not relayed: the server would authenticate the proxy, not the client; bind with a DN and password"
	}
	return fmt.Sprintf("SASL %s is not relayed: the proxy replays a simple bind on each server; bind with a DN and password", mech)
}

// responseTag maps a request tag to its response tag.
var responseTag = map[ber.Tag]ber.Tag{
	tagBind:     ldap.ApplicationBindResponse,
	tagSearch:   ldap.ApplicationSearchResultDone,
	tagModify:   ldap.ApplicationModifyResponse,
	tagAdd:      ldap.ApplicationAddResponse,
	tagDelete:   ldap.ApplicationDelResponse,
	tagModifyDN: ldap.ApplicationModifyDNResponse,
	tagCompare:  ldap.ApplicationCompareResponse,
}

// reply sends a result the proxy makes itself.
func (c *clientConn) reply(req *request, r result, controls []ldap.Control) {
	var op *ber.Packet
	if t, ok := responseTag[req.tag]; ok {
		op = resultOp(t, r)
	} else {
		op = extendedOp(r, "", nil, false)
	}
	if err := c.write(message(req.id, op, controls)); err != nil {
		c.log.Debug("write response", "err", err)
	}
}

// resultOf maps a Session error to the LDAP result sent to the client:
// a backend's result is passed through unchanged; a call that failed on
// every server until its deadline, or whose server's certificate does not
// verify, is unavailable (52).
func resultOf(err error) result {
	if err == nil {
		return result{}
	}
	switch {
	case errors.Is(err, retrier.ErrAllServersFailed), errors.Is(err, retrier.ErrDraining),
		errors.Is(err, retrier.ErrClosed), errors.Is(err, retrier.ErrCertificate):
		return result{code: codeUnavailable, message: err.Error()}
	}
	var le *ldap.Error
	if errors.As(err, &le) && le.ResultCode < ldap.ErrorNetwork {
		msg := err.Error()
		if error(le) == err && le.Err != nil {
			msg = le.Err.Error()
		}
		return result{code: le.ResultCode, matchedDN: le.MatchedDN, message: msg}
	}
	return result{code: codeOther, message: err.Error()}
}
