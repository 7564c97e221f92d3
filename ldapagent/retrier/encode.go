package retrier

import (
	"errors"
	"fmt"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"
	"github.com/ldmirror/ldmirror/ldapagent/retrier/wire"
)

// Encoding of go-ldap's request types into the protocolOp and controls
// elements a Request carries, and decoding of responses into its result
// types. Both use asn1-ber, as go-ldap does; the encodings are go-ldap's
// (its appendTo methods are not exported).

func str(s string) *ber.Packet {
	return ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, s, "")
}

func application(tag ber.Tag) *ber.Packet {
	return ber.Encode(ber.ClassApplication, ber.TypeConstructed, tag, nil, "")
}

// encodeControls returns the [0] Controls element, or nil for none.
func encodeControls(cs []ldap.Control) []byte {
	if len(cs) == 0 {
		return nil
	}
	p := ber.Encode(ber.ClassContext, ber.TypeConstructed, 0, nil, "")
	for _, c := range cs {
		p.AppendChild(c.Encode())
	}
	return p.Bytes()
}

func attributeList(name string, vals []string) *ber.Packet {
	seq := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "")
	seq.AppendChild(str(name))
	set := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSet, nil, "")
	for _, v := range vals {
		set.AppendChild(str(v))
	}
	seq.AppendChild(set)
	return seq
}

func addRequest(r *ldap.AddRequest) *Request {
	op := application(ldap.ApplicationAddRequest)
	op.AppendChild(str(r.DN))
	attrs := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "")
	for _, a := range r.Attributes {
		attrs.AppendChild(attributeList(a.Type, a.Vals))
	}
	op.AppendChild(attrs)
	return &Request{Op: op.Bytes(), Controls: encodeControls(r.Controls), Add: r}
}

func modifyRequest(r *ldap.ModifyRequest) *Request {
	op := application(ldap.ApplicationModifyRequest)
	op.AppendChild(str(r.DN))
	changes := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "")
	for _, c := range r.Changes {
		ch := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "")
		ch.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, uint64(c.Operation), ""))
		ch.AppendChild(attributeList(c.Modification.Type, c.Modification.Vals))
		changes.AppendChild(ch)
	}
	op.AppendChild(changes)
	return &Request{Op: op.Bytes(), Controls: encodeControls(r.Controls)}
}

func delRequest(r *ldap.DelRequest) *Request {
	op := ber.NewString(ber.ClassApplication, ber.TypePrimitive, ldap.ApplicationDelRequest, r.DN, "")
	return &Request{Op: op.Bytes(), Controls: encodeControls(r.Controls)}
}

func modifyDNRequest(r *ldap.ModifyDNRequest) *Request {
	op := application(ldap.ApplicationModifyDNRequest)
	op.AppendChild(str(r.DN))
	op.AppendChild(str(r.NewRDN))
	op.AppendChild(ber.NewBoolean(ber.ClassUniversal, ber.TypePrimitive, ber.TagBoolean, r.DeleteOldRDN, ""))
	if r.NewSuperior != "" {
		op.AppendChild(ber.NewString(ber.ClassContext, ber.TypePrimitive, 0, r.NewSuperior, ""))
	}
	return &Request{Op: op.Bytes(), Controls: encodeControls(r.Controls), ModifyDN: r}
}

func compareRequest(dn, attribute, value string) *Request {
	op := application(ldap.ApplicationCompareRequest)
	op.AppendChild(str(dn))
	ava := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "")
	ava.AppendChild(str(attribute))
	ava.AppendChild(str(value))
	op.AppendChild(ava)
	return &Request{Op: op.Bytes()}
}

func extendedRequest(r *ldap.ExtendedRequest) *Request {
	op := application(ldap.ApplicationExtendedRequest)
	op.AppendChild(ber.NewString(ber.ClassContext, ber.TypePrimitive, 0, r.Name, ""))
	if v := r.Value; v != nil {
		if v.ClassType != ber.ClassContext || v.Tag != 1 {
			v = ber.NewString(ber.ClassContext, ber.TypePrimitive, 1, string(v.Bytes()), "")
		}
		op.AppendChild(v)
	}
	return &Request{Op: op.Bytes(), Controls: encodeControls(r.Controls)}
}

func searchRequest(r *ldap.SearchRequest) (*Request, error) {
	filter, err := ldap.CompileFilter(r.Filter)
	if err != nil {
		return nil, err
	}
	op := application(ldap.ApplicationSearchRequest)
	op.AppendChild(str(r.BaseDN))
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, uint64(r.Scope), ""))
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, uint64(r.DerefAliases), ""))
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, uint64(r.SizeLimit), ""))
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, uint64(r.TimeLimit), ""))
	op.AppendChild(ber.NewBoolean(ber.ClassUniversal, ber.TypePrimitive, ber.TagBoolean, r.TypesOnly, ""))
	op.AppendChild(filter)
	attrs := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "")
	for _, a := range r.Attributes {
		attrs.AppendChild(str(a))
	}
	op.AppendChild(attrs)
	return &Request{Op: op.Bytes(), Controls: encodeControls(r.Controls)}, nil
}

// resultError is the error of a response whose operation is an
// LDAPResult: nil for success (0), else an *ldap.Error with the code,
// matched DN and diagnostic message, as go-ldap returns it.
func resultError(msg []byte) error {
	m, err := wire.Split(msg)
	if err != nil {
		return ldap.NewError(ldap.ErrorNetwork, err)
	}
	code, matched, diag, err := wire.Result(m.Op)
	if err != nil {
		return ldap.NewError(ldap.ErrorNetwork, err)
	}
	if code == 0 {
		return nil
	}
	return &ldap.Error{ResultCode: uint16(code), MatchedDN: string(matched), Err: errors.New(string(diag))}
}

// decodeMessage decodes a response with asn1-ber and returns its
// operation and controls.
func decodeMessage(msg []byte) (op *ber.Packet, controls []ldap.Control, err error) {
	p, err := ber.DecodePacketErr(msg)
	if err != nil {
		return nil, nil, err
	}
	if len(p.Children) < 2 {
		return nil, nil, fmt.Errorf("%w: no operation", wire.ErrMalformed)
	}
	if len(p.Children) > 2 {
		for _, c := range p.Children[2].Children {
			ctl, err := ldap.DecodeControl(c)
			if err != nil {
				return nil, nil, err
			}
			controls = append(controls, ctl)
		}
	}
	return p.Children[1], controls, nil
}

// decodeEntry decodes a SearchResultEntry's operation.
func decodeEntry(op *ber.Packet) (*ldap.Entry, error) {
	if len(op.Children) != 2 {
		return nil, fmt.Errorf("%w: search entry", wire.ErrMalformed)
	}
	e := &ldap.Entry{DN: op.Children[0].Data.String()}
	for _, a := range op.Children[1].Children {
		if len(a.Children) != 2 {
			return nil, fmt.Errorf("%w: attribute of %s", wire.ErrMalformed, e.DN)
		}
		at := &ldap.EntryAttribute{Name: a.Children[0].Data.String()}
		for _, v := range a.Children[1].Children {
			b := v.Data.Bytes()
			at.Values = append(at.Values, string(b))
			at.ByteValues = append(at.ByteValues, b)
		}
		e.Attributes = append(e.Attributes, at)
	}
	return e, nil
}

// successMessage is a response with message ID id, response tag and
// result success: what an idempotent write rule answers.
func successMessage(id int64, tag ber.Tag) []byte {
	op := application(tag)
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, int64(0), ""))
	op.AppendChild(str(""))
	op.AppendChild(str(""))
	return wire.Append(nil, id, op.Bytes(), nil)
}
