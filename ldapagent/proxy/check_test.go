package proxy

import (
	"testing"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"
	"github.com/ldmirror/ldmirror/ldapagent/retrier/wire"
)

// TestCheckFilter: filters go-ldap compiles pass; malformed ones, and
// ones go-ldap would read back as other filters, do not.
func TestCheckFilter(t *testing.T) {
	for _, f := range []string{
		"(cn=x)", "(cn=*)", "(&(objectClass=person)(|(uid=a)(uid=b))(!(sn=c)))", "(cn>=a)", "(cn<=a)", "(cn~=a)",
		"(cn=a*b*c)", "(cn=*b*)", "(cn=a*)", "(cn=*c)", "(cn:caseExactMatch:=x)", "(cn:dn:=x)", "(:2.5.13.2:=x)",
		"(cn;lang-en=x)", "(2.5.4.3=x)", `(cn=\28\29\2a)`,
	} {
		p, err := ldap.CompileFilter(f)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		b := p.Bytes()
		content, _, _ := wire.Element(b)
		if err := checkFilter(b[0], content, 0); err != nil {
			t.Errorf("%s: rejected: %v", f, err)
		}
	}
	str := func(tag ber.Tag, s string) *ber.Packet {
		return ber.NewString(ber.ClassContext, ber.TypePrimitive, tag, s, "")
	}
	ctx := func(tag ber.Tag, kids ...*ber.Packet) *ber.Packet {
		p := ber.Encode(ber.ClassContext, ber.TypeConstructed, tag, nil, "")
		for _, k := range kids {
			p.AppendChild(k)
		}
		return p
	}
	octets := func(s string) *ber.Packet {
		return ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, s, "")
	}
	seq := func(kids ...*ber.Packet) *ber.Packet {
		p := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "")
		for _, k := range kids {
			p.AppendChild(k)
		}
		return p
	}
	deep := str(7, "cn")
	for range maxFilterDepth + 2 {
		deep = ctx(2, deep)
	}
	for name, f := range map[string]*ber.Packet{
		"empty and":                 ctx(0),
		"not with two":              ctx(2, str(7, "cn"), str(7, "sn")),
		"equality with one element": ctx(3, octets("cn")),
		"attribute with &":          ctx(3, octets("&cn"), octets("x")),
		"empty present":             str(7, ""),
		"substrings, final first":   ctx(4, octets("cn"), seq(str(2, "a"), str(0, "b"))),
		"substrings, none":          ctx(4, octets("cn"), seq()),
		"extensible without a type": ctx(9, str(3, "x")),
		"unknown choice":            ctx(10, octets("cn")),
		"nested too deep":           deep,
	} {
		b := f.Bytes()
		content, _, _ := wire.Element(b)
		if err := checkFilter(b[0], content, 0); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
