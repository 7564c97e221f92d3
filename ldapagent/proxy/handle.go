package proxy

import (
	"context"
	"errors"
	"fmt"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"
	"github.com/ldmirror/ldmirror/ldapagent/retrier"
)

// Result codes the proxy produces itself.
const (
	codeProtocolError        = 2
	codeCompareFalse         = 5
	codeCompareTrue          = 6
	codeAuthMethodNotSupport = 7
	codeUnavailable          = 52
	codeOther                = 80
)

// run relays one operation and writes its response. An abandoned operation
// gets no response (RFC 4511 4.11).
func (c *clientConn) run(req *request) {
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
	if req.tag == tagExtended {
		c.runExtended(ctx, sess, req)
		return
	}
	r, controls, ok := c.call(ctx, sess, req)
	if !ok || ctx.Err() != nil {
		return // abandoned, or the client is gone
	}
	c.reply(req, r, controls)
}

// call relays req (anything but an extended operation) through sess; ok
// is false if the client could not be written to.
func (c *clientConn) call(ctx context.Context, sess *retrier.Session, req *request) (r result, controls []ldap.Control, ok bool) {
	switch req.tag {
	case tagBind:
		switch {
		case req.bind.version != 3:
			r = result{code: codeProtocolError, message: "only LDAPv3 is supported"}
		case req.bind.sasl:
			r = result{code: codeAuthMethodNotSupport, message: saslRefusal(req.bind.mech)}
		default:
			r = resultOf(sess.Bind(ctx, req.bind.name, req.bind.password))
		}
	case tagSearch:
		res, err := sess.SearchEach(ctx, req.search, func(e *ldap.Entry) error {
			return c.write(message(req.id, entryOp(e), nil))
		})
		if res != nil {
			for _, ref := range res.Referrals {
				if err := c.write(message(req.id, referenceOp([]string{ref}), nil)); err != nil {
					return r, nil, false
				}
			}
			controls = res.Controls
		}
		r = resultOf(err)
	case tagModify:
		r = resultOf(sess.Modify(ctx, req.modify))
	case tagAdd:
		r = resultOf(sess.Add(ctx, req.add))
	case tagDelete:
		r = resultOf(sess.Delete(ctx, req.del))
	case tagModifyDN:
		r = resultOf(sess.ModifyDN(ctx, req.modifyDN))
	case tagCompare:
		ok, err := sess.Compare(ctx, req.compare.dn, req.compare.attribute, req.compare.value)
		r = resultOf(err)
		if err == nil {
			r.code = codeCompareFalse
			if ok {
				r.code = codeCompareTrue
			}
		}
	}
	return r, controls, true
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

// runExtended relays an extended operation and writes its response.
func (c *clientConn) runExtended(ctx context.Context, sess *retrier.Session, req *request) {
	x := &ldap.ExtendedRequest{Name: req.extended.name, Controls: req.controls}
	if req.extended.hasValue {
		x.Value = ber.NewString(ber.ClassContext, ber.TypePrimitive, 1, string(req.extended.value), "requestValue")
	}
	resp, err := sess.Extended(ctx, x)
	r := resultOf(err)
	if ctx.Err() != nil {
		return
	}
	if err != nil || resp == nil {
		_ = c.write(message(req.id, extendedOp(r, "", nil, false), nil))
		return
	}
	var value []byte
	if resp.Value != nil {
		value = resp.Value.Data.Bytes()
	}
	_ = c.write(message(req.id, extendedOp(r, resp.Name, value, resp.Value != nil), resp.Controls))
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
// every server until its deadline is unavailable (52).
func resultOf(err error) result {
	if err == nil {
		return result{}
	}
	if errors.Is(err, retrier.ErrAllServersFailed) || errors.Is(err, retrier.ErrDraining) || errors.Is(err, retrier.ErrClosed) {
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
