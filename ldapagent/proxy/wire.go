package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"io"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"
)

// Decoding errors; each closes the client connection.
var (
	errOversized = errors.New("message larger than the limit")
	errMalformed = errors.New("malformed message")
	errUnknownOp = errors.New("unknown operation")
)

// readMessage reads one BER-encoded LDAPMessage (a definite-length
// SEQUENCE) of at most max bytes.
func readMessage(r *bufio.Reader, max int) ([]byte, error) {
	tag, err := r.ReadByte()
	if err != nil {
		return nil, err
	}
	if tag != 0x30 {
		return nil, fmt.Errorf("%w: tag 0x%02x, want SEQUENCE", errMalformed, tag)
	}
	first, err := r.ReadByte()
	if err != nil {
		return nil, unexpectedEOF(err)
	}
	header := []byte{tag, first}
	length := int(first)
	switch {
	case first == 0x80:
		return nil, fmt.Errorf("%w: indefinite length", errMalformed)
	case first&0x80 != 0:
		n := int(first & 0x7f)
		if n > 4 {
			return nil, fmt.Errorf("%w: %d length bytes", errOversized, n)
		}
		length = 0
		for range n {
			b, err := r.ReadByte()
			if err != nil {
				return nil, unexpectedEOF(err)
			}
			header = append(header, b)
			length = length<<8 | int(b)
		}
	}
	if length > max-len(header) {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", errOversized, length+len(header), max)
	}
	msg := make([]byte, len(header)+length)
	copy(msg, header)
	if _, err := io.ReadFull(r, msg[len(header):]); err != nil {
		return nil, unexpectedEOF(err)
	}
	return msg, nil
}

func unexpectedEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

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

// request is one decoded LDAPMessage; exactly one operation field is set.
type request struct {
	id       int64
	tag      ber.Tag
	controls []ldap.Control

	bind     *bindRequest
	search   *ldap.SearchRequest
	modify   *ldap.ModifyRequest
	add      *ldap.AddRequest
	del      *ldap.DelRequest
	modifyDN *ldap.ModifyDNRequest
	compare  *compareRequest
	abandon  int64
	extended *extendedRequest
}

type bindRequest struct {
	version  int64
	name     string
	password string
	sasl     bool   // SASL (not relayed)
	mech     string // the SASL mechanism
}

type compareRequest struct{ dn, attribute, value string }

type extendedRequest struct {
	name     string
	value    []byte
	hasValue bool
}

// decodeRequest decodes an LDAPMessage read by readMessage.
func decodeRequest(msg []byte) (req *request, err error) {
	p, err := ber.DecodePacketErr(msg)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errMalformed, err)
	}
	if p.ClassType != ber.ClassUniversal || p.TagType != ber.TypeConstructed || p.Tag != ber.TagSequence || len(p.Children) < 2 || len(p.Children) > 3 {
		return nil, fmt.Errorf("%w: not an LDAPMessage", errMalformed)
	}
	idp := p.Children[0]
	id, ok := idp.Value.(int64)
	if idp.ClassType != ber.ClassUniversal || idp.Tag != ber.TagInteger || !ok || id < 0 || id > 1<<31-1 {
		return nil, fmt.Errorf("%w: bad message ID", errMalformed)
	}
	op := p.Children[1]
	if op.ClassType != ber.ClassApplication {
		return nil, fmt.Errorf("%w: operation is not an application tag", errMalformed)
	}
	req = &request{id: id, tag: op.Tag}
	if len(p.Children) == 3 {
		cp := p.Children[2]
		if cp.ClassType != ber.ClassContext || cp.Tag != 0 || cp.TagType != ber.TypeConstructed {
			return nil, fmt.Errorf("%w: bad controls", errMalformed)
		}
		for _, c := range cp.Children {
			ctl, err := decodeControl(c)
			if err != nil {
				return nil, err
			}
			req.controls = append(req.controls, ctl)
		}
	}
	switch op.Tag {
	case tagBind:
		req.bind, err = decodeBind(op)
	case tagUnbind:
	case tagSearch:
		req.search, err = decodeSearch(op, req.controls)
	case tagModify:
		req.modify, err = decodeModify(op, req.controls)
	case tagAdd:
		req.add, err = decodeAdd(op, req.controls)
	case tagDelete:
		if op.TagType != ber.TypePrimitive {
			return nil, fmt.Errorf("%w: delete request", errMalformed)
		}
		req.del = ldap.NewDelRequest(op.Data.String(), req.controls)
	case tagModifyDN:
		req.modifyDN, err = decodeModifyDN(op, req.controls)
	case tagCompare:
		req.compare, err = decodeCompare(op)
	case tagAbandon:
		if op.TagType != ber.TypePrimitive {
			return nil, fmt.Errorf("%w: abandon request", errMalformed)
		}
		req.abandon, err = ber.ParseInt64(op.Data.Bytes())
	case tagExtended:
		req.extended, err = decodeExtended(op)
	default:
		return nil, fmt.Errorf("%w: application tag %d", errUnknownOp, op.Tag)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", errMalformed, opName(op.Tag), err)
	}
	return req, nil
}

func decodeControl(p *ber.Packet) (c ldap.Control, err error) {
	// go-ldap's decoder indexes children without checking every shape.
	defer func() {
		if r := recover(); r != nil {
			c, err = nil, fmt.Errorf("%w: control: %v", errMalformed, r)
		}
	}()
	if p.TagType != ber.TypeConstructed || len(p.Children) < 1 || len(p.Children) > 3 {
		return nil, fmt.Errorf("%w: control", errMalformed)
	}
	for _, ch := range p.Children {
		if ch.TagType != ber.TypePrimitive || ch.ClassType != ber.ClassUniversal {
			return nil, fmt.Errorf("%w: control", errMalformed)
		}
	}
	if p.Children[0].Tag != ber.TagOctetString {
		return nil, fmt.Errorf("%w: control type", errMalformed)
	}
	c, err = ldap.DecodeControl(p)
	if err != nil {
		return nil, fmt.Errorf("%w: control: %v", errMalformed, err)
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

func decodeBind(op *ber.Packet) (*bindRequest, error) {
	c, err := children(op, 3, 3)
	if err != nil {
		return nil, err
	}
	b := &bindRequest{}
	if b.version, err = integer(c[0]); err != nil {
		return nil, err
	}
	if b.name, err = str(c[1]); err != nil {
		return nil, err
	}
	switch {
	case c[2].ClassType == ber.ClassContext && c[2].Tag == 0:
		b.password, err = str(c[2])
	case c[2].ClassType == ber.ClassContext && c[2].Tag == 3:
		b.sasl = true
		if m, cerr := children(c[2], 1, 2); cerr == nil {
			b.mech, err = str(m[0])
		}
	default:
		err = errors.New("unknown authentication choice")
	}
	return b, err
}

func decodeSearch(op *ber.Packet, controls []ldap.Control) (*ldap.SearchRequest, error) {
	c, err := children(op, 8, 8)
	if err != nil {
		return nil, err
	}
	base, err := str(c[0])
	if err != nil {
		return nil, err
	}
	var n [5]int64
	for i := range n {
		if n[i], err = integer(c[1+i]); err != nil {
			return nil, err
		}
	}
	scope, deref, size, limit, typesOnly := n[0], n[1], n[2], n[3], n[4]
	if scope < 0 || scope > 3 || deref < 0 || deref > 3 || size < 0 || limit < 0 || size > 1<<31-1 || limit > 1<<31-1 {
		return nil, errors.New("scope, deref or limits out of range")
	}
	filter, err := decompileFilter(c[6])
	if err != nil {
		return nil, fmt.Errorf("filter: %v", err)
	}
	if _, err := ldap.CompileFilter(filter); err != nil {
		return nil, fmt.Errorf("filter %q: %v", filter, err)
	}
	if c[7].TagType != ber.TypeConstructed {
		return nil, errors.New("attribute list")
	}
	var attrs []string
	for _, a := range c[7].Children {
		s, err := str(a)
		if err != nil {
			return nil, err
		}
		attrs = append(attrs, s)
	}
	return ldap.NewSearchRequest(base, int(scope), int(deref), int(size), int(limit), typesOnly != 0, filter, attrs, controls), nil
}

// decompileFilter is ldap.DecompileFilter, which may index missing children
// of a malformed filter.
func decompileFilter(p *ber.Packet) (f string, err error) {
	defer func() {
		if r := recover(); r != nil {
			f, err = "", fmt.Errorf("%v", r)
		}
	}()
	return ldap.DecompileFilter(p)
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

func decodeModify(op *ber.Packet, controls []ldap.Control) (*ldap.ModifyRequest, error) {
	dn, changes, err := dnAndList(op, "changes")
	if err != nil {
		return nil, err
	}
	req := ldap.NewModifyRequest(dn, controls)
	for _, ch := range changes {
		cc, err := children(ch, 2, 2)
		if err != nil {
			return nil, err
		}
		kind, err := integer(cc[0])
		if err != nil {
			return nil, err
		}
		name, vals, err := attribute(cc[1])
		if err != nil {
			return nil, err
		}
		switch kind {
		case ldap.AddAttribute, ldap.DeleteAttribute, ldap.ReplaceAttribute, ldap.IncrementAttribute:
		default:
			return nil, fmt.Errorf("change operation %d", kind)
		}
		req.Changes = append(req.Changes, ldap.Change{Operation: uint(kind), Modification: ldap.PartialAttribute{Type: name, Vals: vals}})
	}
	return req, nil
}

func decodeAdd(op *ber.Packet, controls []ldap.Control) (*ldap.AddRequest, error) {
	dn, attrs, err := dnAndList(op, "attribute list")
	if err != nil {
		return nil, err
	}
	req := ldap.NewAddRequest(dn, controls)
	for _, a := range attrs {
		name, vals, err := attribute(a)
		if err != nil {
			return nil, err
		}
		req.Attribute(name, vals)
	}
	return req, nil
}

func decodeModifyDN(op *ber.Packet, controls []ldap.Control) (*ldap.ModifyDNRequest, error) {
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
	return ldap.NewModifyDNWithControlsRequest(dn, rdn, del != 0, sup, controls), nil
}

func decodeCompare(op *ber.Packet) (*compareRequest, error) {
	dn, ava, err := dnAndList(op, "attribute value assertion")
	if err != nil {
		return nil, err
	}
	if len(ava) != 2 {
		return nil, errors.New("attribute value assertion")
	}
	attr, err := str(ava[0])
	if err != nil {
		return nil, err
	}
	val, err := str(ava[1])
	if err != nil {
		return nil, err
	}
	return &compareRequest{dn: dn, attribute: attr, value: val}, nil
}

func decodeExtended(op *ber.Packet) (*extendedRequest, error) {
	c, err := children(op, 1, 2)
	if err != nil {
		return nil, err
	}
	if c[0].ClassType != ber.ClassContext || c[0].Tag != 0 {
		return nil, errors.New("request name")
	}
	name, err := str(c[0])
	if err != nil {
		return nil, err
	}
	e := &extendedRequest{name: name}
	if len(c) == 2 {
		if c[1].ClassType != ber.ClassContext || c[1].Tag != 1 || c[1].TagType != ber.TypePrimitive {
			return nil, errors.New("request value")
		}
		e.value, e.hasValue = c[1].Data.Bytes(), true
	}
	return e, nil
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

func entryOp(e *ldap.Entry) *ber.Packet {
	op := ber.Encode(ber.ClassApplication, ber.TypeConstructed, ldap.ApplicationSearchResultEntry, nil, "")
	op.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, e.DN, "objectName"))
	attrs := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "attributes")
	for _, a := range e.Attributes {
		pa := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "")
		pa.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, a.Name, "type"))
		vals := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSet, nil, "vals")
		for _, v := range a.ByteValues {
			vals.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, string(v), ""))
		}
		pa.AppendChild(vals)
		attrs.AppendChild(pa)
	}
	op.AppendChild(attrs)
	return op
}

func referenceOp(uris []string) *ber.Packet {
	op := ber.Encode(ber.ClassApplication, ber.TypeConstructed, ldap.ApplicationSearchResultReference, nil, "")
	for _, u := range uris {
		op.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, u, "URI"))
	}
	return op
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
