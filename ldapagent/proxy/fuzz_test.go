package proxy

import (
	"bufio"
	"bytes"
	"testing"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"
	"github.com/ldmirror/ldmirror/ldapagent/retrier/wire"
)

// FuzzDecodeRequest feeds arbitrary bytes to the proxy's request path
// (framing and decoding). It must never panic, never accept a message
// larger than the limit, decode what the proxy acts on for the operation
// its tag names, and accept only search filters that go-ldap reads back
// and compiles (the server gets the filter as the client sent it).
func FuzzDecodeRequest(f *testing.F) {
	for _, c := range badInputs {
		f.Add(c.msg)
	}
	f.Add(validBind())
	f.Add(message(3, searchEqOp("dc=example", "cn", "x", "cn"), nil))
	const max = 4096
	f.Fuzz(func(t *testing.T, data []byte) {
		msg, err := wire.Read(bufio.NewReader(bytes.NewReader(data)), max)
		if err != nil {
			return
		}
		if len(msg) > max {
			t.Fatalf("accepted %d bytes, limit %d", len(msg), max)
		}
		req, err := decodeRequest(msg)
		if err != nil {
			return
		}
		if (req.bind != nil) != (req.tag == tagBind) || (req.add != nil) != (req.tag == tagAdd) || (req.modifyDN != nil) != (req.tag == tagModifyDN) {
			t.Fatalf("tag %d decoded with bind %v, add %v, modify DN %v", req.tag, req.bind != nil, req.add != nil, req.modifyDN != nil)
		}
		if req.tag == tagSearch {
			op, err := ber.DecodePacketErr(req.op)
			if err != nil {
				t.Fatalf("accepted search does not decode: %v", err)
			}
			filter, err := ldap.DecompileFilter(op.Children[6])
			if err != nil {
				t.Fatalf("accepted filter go-ldap cannot read: %v", err)
			}
			if _, err := ldap.CompileFilter(filter); err != nil {
				t.Fatalf("accepted filter %q does not compile: %v", filter, err)
			}
		}
	})
}

func validBind() []byte {
	op := ber.Encode(ber.ClassApplication, ber.TypeConstructed, tagBind, nil, "")
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, int64(3), ""))
	op.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, "cn=admin", ""))
	op.AppendChild(ber.NewString(ber.ClassContext, ber.TypePrimitive, 0, "secret", ""))
	p := envelope(1)
	p.AppendChild(op)
	return p.Bytes()
}
