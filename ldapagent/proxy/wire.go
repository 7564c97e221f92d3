package proxy

import (
	"errors"
	"fmt"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"
	"github.com/ldmirror/ldmirror/ldapagent/retrier/wire"
)

// errUnknownOp is a request with an operation the proxy does not know; it
// closes the client connection, as wire.ErrMalformed and wire.ErrOversized
// do.
var errUnknownOp = errors.New("unknown operation")

// LDAP application tags of requests (RFC 4511).
const (
	tagBind     = ldap.ApplicationBindRequest
	tagUnbind   = ldap.ApplicationUnbindRequest
	tagSearch   = ldap.ApplicationSearchRequest
	tagModify   = ldap.ApplicationModifyRequest
	tagAdd      = ldap.ApplicationAddRequest
	tagDelete   = ldap.ApplicationDelRequest
	tagModifyDN = ldap.ApplicationModifyDNRequest
	tagCompare  = ldap.ApplicationCompareRequest
	tagAbandon  = ldap.ApplicationAbandonRequest
	tagExtended = ldap.ApplicationExtendedRequest
)

// request is one client request: the message ID, the operation and
// controls as they arrived (relayed as they are), and what the proxy
// needs decoded: a bind's credentials, an add or modify DN for the
// idempotent write rules, an abandon's message ID, an extended
// operation's name.
type request struct {
	id       int64
	tag      ber.Tag
	op       []byte // the protocolOp element
	controls []byte // the [0] Controls element, or nil

	bind     *bindRequest
	add      *ldap.AddRequest
	modifyDN *ldap.ModifyDNRequest
	abandon  int64
	extName  string
}

// bindRequest is a BindRequest. password is a slice of the request's
// message, which the caller zeroes after the bind.
type bindRequest struct {
	version  int64
	name     string
	password []byte
	sasl     bool   // SASL (not relayed)
	mech     string // the SASL mechanism
}

// decodeRequest checks and decodes an LDAPMessage read by wire.Read.
// Every operation is decoded far enough to be known valid (a server may
// close the connection of a client that sends it a malformed request,
// which is the proxy's shared one), but only what the proxy acts on is
// kept.
func decodeRequest(msg []byte) (req *request, err error) {
	m, err := wire.Split(msg)
	if err != nil {
		return nil, err
	}
	if m.Op[0]&0xc0 != 0x40 {
		return nil, fmt.Errorf("%w: operation is not an application tag", wire.ErrMalformed)
	}
	req = &request{id: m.ID, tag: ber.Tag(m.Op[0] & 0x1f), op: m.Op, controls: m.Controls}
	if len(m.Controls) > 0 {
		if err := checkControls(m.Controls); err != nil {
			return nil, err
		}
	}
	constructed := m.Op[0]&0x20 != 0
	switch {
	case req.tag == tagBind && constructed:
		req.bind, err = decodeBind(m.Op)
	case req.tag == tagUnbind || req.tag == tagDelete || req.tag == tagAbandon:
		if constructed {
			return nil, fmt.Errorf("%w: %s", wire.ErrMalformed, opName(req.tag))
		}
		if req.tag == tagAbandon {
			var content []byte
			if content, _, err = wire.Element(m.Op); err == nil {
				req.abandon, err = ber.ParseInt64(content)
			}
		}
	case constructed && knownConstructed(req.tag):
		err = req.decodeOp()
	default:
		return nil, fmt.Errorf("%w: application tag %d", errUnknownOp, req.tag)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", wire.ErrMalformed, opName(req.tag), err)
	}
	return req, nil
}

func knownConstructed(tag ber.Tag) bool {
	switch tag {
	case tagSearch, tagModify, tagAdd, tagModifyDN, tagCompare, tagExtended:
		return true
	}
	return false
}

// decodeOp checks the constructed operations other than bind, and
// decodes an add or a modify DN for the idempotent write rules.
func (req *request) decodeOp() (err error) {
	switch req.tag {
	case tagSearch:
		return checkSearch(req.op)
	case tagModify:
		return checkModify(req.op)
	case tagCompare:
		return checkCompare(req.op)
	case tagExtended:
		req.extName, err = extendedName(req.op)
		return err
	}
	op, err := ber.DecodePacketErr(req.op)
	if err != nil {
		return err
	}
	if req.tag == tagAdd {
		req.add, err = decodeAdd(op)
	} else {
		req.modifyDN, err = decodeModifyDN(op)
	}
	return err
}

func checkControls(b []byte) error {
	p, err := ber.DecodePacketErr(b)
	if err != nil {
		return fmt.Errorf("%w: controls: %v", wire.ErrMalformed, err)
	}
	for _, c := range p.Children {
		if _, err := decodeControl(c); err != nil {
			return err
		}
	}
	return nil
}

func decodeControl(p *ber.Packet) (c ldap.Control, err error) {
	// go-ldap's decoder indexes children without checking every shape.
	defer func() {
		if r := recover(); r != nil {
			c, err = nil, fmt.Errorf("%w: control: %v", wire.ErrMalformed, r)
		}
	}()
	if p.TagType != ber.TypeConstructed || len(p.Children) < 1 || len(p.Children) > 3 {
		return nil, fmt.Errorf("%w: control", wire.ErrMalformed)
	}
	for _, ch := range p.Children {
		if ch.TagType != ber.TypePrimitive || ch.ClassType != ber.ClassUniversal {
			return nil, fmt.Errorf("%w: control", wire.ErrMalformed)
		}
	}
	if p.Children[0].Tag != ber.TagOctetString {
		return nil, fmt.Errorf("%w: control type", wire.ErrMalformed)
	}
	c, err = ldap.DecodeControl(p)
	if err != nil {
		return nil, fmt.Errorf("%w: control: %v", wire.ErrMalformed, err)
	}
	return c, nil
}

// children checks that p is constructed with between min and max children.
func children(p *ber.Packet, min, max int) ([]*ber.Packet, error) {
	if p.TagType != ber.TypeConstructed {
		return nil, errors.New("not constructed")
	}
	if len(p.Children) < min || len(p.Children) > max {
		return nil, fmt.Errorf("%d elements, want %d to %d", len(p.Children), min, max)
	}
	return p.Children, nil
}

// str returns the content of a primitive OCTET STRING-like element.
func str(p *ber.Packet) (string, error) {
	if p.TagType != ber.TypePrimitive {
		return "", errors.New("string is constructed")
	}
	return p.Data.String(), nil
}

func integer(p *ber.Packet) (int64, error) {
	if p.TagType != ber.TypePrimitive || p.ClassType != ber.ClassUniversal || (p.Tag != ber.TagInteger && p.Tag != ber.TagEnumerated && p.Tag != ber.TagBoolean) {
		return 0, errors.New("not an integer")
	}
	return ber.ParseInt64(p.Data.Bytes())
}

// decodeBind decodes a BindRequest element by element, so that the
// password stays in the request's message (which is zeroed) instead of
// being copied into packets and strings.
func decodeBind(op []byte) (*bindRequest, error) {
	content, _, err := wire.Element(op)
	if err != nil {
		return nil, err
	}
	version, rest, err := wire.Element(content)
	if err != nil || content[0] != 0x02 {
		return nil, errors.New("version")
	}
	b := &bindRequest{}
	if b.version, err = ber.ParseInt64(version); err != nil {
		return nil, err
	}
	name, auth, err := wire.Element(rest)
	if err != nil || rest[0] != 0x04 {
		return nil, errors.New("name")
	}
	b.name = string(name)
	cred, tail, err := wire.Element(auth)
	if err != nil || len(tail) != 0 {
		return nil, errors.New("authentication")
	}
	switch auth[0] {
	case 0x80: // [0] simple
		b.password = cred
	case 0xa3: // [3] SaslCredentials
		b.sasl = true
		if mech, _, err := wire.Element(cred); err == nil && cred[0] == 0x04 {
			b.mech = string(mech)
		}
	default:
		return nil, errors.New("unknown authentication choice")
	}
	return b, nil
}

// attribute decodes a PartialAttribute: SEQUENCE { type, SET OF value }.
func attribute(p *ber.Packet) (string, []string, error) {
	c, err := children(p, 2, 2)
	if err != nil {
		return "", nil, err
	}
	name, err := str(c[0])
	if err != nil {
		return "", nil, err
	}
	if c[1].TagType != ber.TypeConstructed {
		return "", nil, errors.New("attribute values")
	}
	vals := []string{}
	for _, v := range c[1].Children {
		s, err := str(v)
		if err != nil {
			return "", nil, err
		}
		vals = append(vals, s)
	}
	return name, vals, nil
}

// dnAndList decodes the SEQUENCE { entry LDAPDN, <what> SEQUENCE } shape
// of add, modify and compare requests.
func dnAndList(op *ber.Packet, what string) (string, []*ber.Packet, error) {
	c, err := children(op, 2, 2)
	if err != nil {
		return "", nil, err
	}
	dn, err := str(c[0])
	if err != nil {
		return "", nil, err
	}
	if c[1].TagType != ber.TypeConstructed {
		return "", nil, errors.New(what)
	}
	return dn, c[1].Children, nil
}

func decodeAdd(op *ber.Packet) (*ldap.AddRequest, error) {
	dn, attrs, err := dnAndList(op, "attribute list")
	if err != nil {
		return nil, err
	}
	req := ldap.NewAddRequest(dn, nil)
	for _, a := range attrs {
		name, vals, err := attribute(a)
		if err != nil {
			return nil, err
		}
		req.Attribute(name, vals)
	}
	return req, nil
}

func decodeModifyDN(op *ber.Packet) (*ldap.ModifyDNRequest, error) {
	c, err := children(op, 3, 4)
	if err != nil {
		return nil, err
	}
	dn, err := str(c[0])
	if err != nil {
		return nil, err
	}
	rdn, err := str(c[1])
	if err != nil {
		return nil, err
	}
	del, err := integer(c[2])
	if err != nil {
		return nil, err
	}
	sup := ""
	if len(c) == 4 {
		if c[3].ClassType != ber.ClassContext || c[3].Tag != 0 {
			return nil, errors.New("newSuperior")
		}
		if sup, err = str(c[3]); err != nil {
			return nil, err
		}
	}
	return ldap.NewModifyDNRequest(dn, rdn, del != 0, sup), nil
}

func opName(tag ber.Tag) string {
	if n, ok := ldap.ApplicationMap[uint8(tag)]; ok {
		return n
	}
	return fmt.Sprintf("application %d", tag)
}

// Encoding of responses.

// envelope starts an LDAPMessage for message id.
func envelope(id int64) *ber.Packet {
	p := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "LDAPMessage")
	p.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, id, "MessageID"))
	return p
}

// result is an LDAPResult.
type result struct {
	code      uint16
	matchedDN string
	message   string
}

// resultOp encodes an LDAPResult-based response operation with tag.
func resultOp(tag ber.Tag, r result) *ber.Packet {
	op := ber.Encode(ber.ClassApplication, ber.TypeConstructed, tag, nil, "")
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, int64(r.code), "resultCode"))
	op.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, r.matchedDN, "matchedDN"))
	op.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, r.message, "diagnosticMessage"))
	return op
}

// message assembles an LDAPMessage with an operation and optional controls.
func message(id int64, op *ber.Packet, controls []ldap.Control) []byte {
	p := envelope(id)
	p.AppendChild(op)
	if len(controls) > 0 {
		cs := ber.Encode(ber.ClassContext, ber.TypeConstructed, 0, nil, "Controls")
		for _, c := range controls {
			cs.AppendChild(c.Encode())
		}
		p.AppendChild(cs)
	}
	return p.Bytes()
}

// extendedOp encodes an ExtendedResponse.
func extendedOp(r result, name string, value []byte, hasValue bool) *ber.Packet {
	op := resultOp(ldap.ApplicationExtendedResponse, r)
	if name != "" {
		op.AppendChild(ber.NewString(ber.ClassContext, ber.TypePrimitive, 10, name, "responseName"))
	}
	if hasValue {
		op.AppendChild(ber.NewString(ber.ClassContext, ber.TypePrimitive, 11, string(value), "responseValue"))
	}
	return op
}

// Notice of Disconnection (RFC 4511 4.4.1).
const oidNoticeOfDisconnection = "1.3.6.1.4.1.1466.20036"
const oidStartTLS = "1.3.6.1.4.1.1466.20037"
