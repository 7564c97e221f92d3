package proxy

import (
	"bufio"
	"bytes"
	"testing"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"
)

// FuzzDecodeRequest feeds arbitrary bytes to the proxy's request path
// (framing and decoding). It must never panic, never accept a message
// larger than the limit, and a decoded request must have exactly the
// operation its tag names.
func FuzzDecodeRequest(f *testing.F) {
	for _, c := range badInputs {
		f.Add(c.msg)
	}
	f.Add(validBind())
	const max = 4096
	f.Fuzz(func(t *testing.T, data []byte) {
		msg, err := readMessage(bufio.NewReader(bytes.NewReader(data)), max)
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
		set := map[ber.Tag]bool{
			tagBind: req.bind != nil, tagSearch: req.search != nil, tagModify: req.modify != nil,
			tagAdd: req.add != nil, tagDelete: req.del != nil, tagModifyDN: req.modifyDN != nil,
			tagCompare: req.compare != nil, tagExtended: req.extended != nil,
		}
		for tag, ok := range set {
			if ok != (tag == req.tag) {
				t.Fatalf("tag %d decoded with operation fields %v", req.tag, set)
			}
		}
		if req.search != nil {
			if _, err := ldap.CompileFilter(req.search.Filter); err != nil {
				t.Fatalf("accepted filter %q does not compile: %v", req.search.Filter, err)
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
