package proxy

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"testing"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"
	"github.com/ldmirror/ldmirror/internal/slapdtest"
	"github.com/ldmirror/ldmirror/ldapagent/retrier/wire"
)

// rawClient is a synchronous LDAP client that frames messages itself, so
// that a benchmark's profile shows the proxy, not a client library.
type rawClient struct {
	nc net.Conn
	r  *bufio.Reader
	id int64
}

func dialRaw(tb testing.TB, url string) *rawClient {
	tb.Helper()
	nc, err := net.Dial("tcp", strings.TrimPrefix(url, "ldap://"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { nc.Close() })
	return &rawClient{nc: nc, r: bufio.NewReader(nc)}
}

// do sends op and returns the responses up to the final one.
func (c *rawClient) do(tb testing.TB, op *ber.Packet) []*ber.Packet {
	tb.Helper()
	c.id++
	if _, err := c.nc.Write(message(c.id, op, nil)); err != nil {
		tb.Fatal(err)
	}
	var out []*ber.Packet
	for {
		msg, err := wire.Read(c.r, 1<<20)
		if err != nil {
			tb.Fatal(err)
		}
		p, err := ber.DecodePacketErr(msg)
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, p)
		if t := p.Children[1].Tag; t != ldap.ApplicationSearchResultEntry && t != ldap.ApplicationSearchResultReference {
			return out
		}
	}
}

func bindOp(dn, pw string) *ber.Packet {
	op := ber.Encode(ber.ClassApplication, ber.TypeConstructed, tagBind, nil, "")
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, int64(3), ""))
	op.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, dn, ""))
	op.AppendChild(ber.NewString(ber.ClassContext, ber.TypePrimitive, 0, pw, ""))
	return op
}

func searchEqOp(base, attr, value string, attrs ...string) *ber.Packet {
	op := ber.Encode(ber.ClassApplication, ber.TypeConstructed, tagSearch, nil, "")
	op.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, base, ""))
	for _, v := range []int64{2, 0} {
		op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, v, ""))
	}
	for range 2 {
		op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, int64(0), ""))
	}
	op.AppendChild(ber.NewBoolean(ber.ClassUniversal, ber.TypePrimitive, ber.TagBoolean, false, ""))
	eq := ber.Encode(ber.ClassContext, ber.TypeConstructed, 3, nil, "")
	eq.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, attr, ""))
	eq.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, value, ""))
	op.AppendChild(eq)
	al := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "")
	for _, a := range attrs {
		al.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, a, ""))
	}
	op.AppendChild(al)
	return op
}

// BenchmarkRelaySearch is one search by cn returning one entry, through
// the proxy (profile the relay path with -cpuprofile) or straight at slapd
// (-bench=/direct) for comparison.
func BenchmarkRelaySearch(b *testing.B) {
	a := slapdtest.Start(b, slapdtest.Options{NoSync: true})
	c, err := a.Dial()
	if err != nil {
		b.Fatal(err)
	}
	for i := range 100 {
		r := ldap.NewAddRequest(fmt.Sprintf("cn=u%d,%s", i, a.Suffix), nil)
		r.Attribute("objectClass", []string{"inetOrgPerson"})
		r.Attribute("cn", []string{fmt.Sprintf("u%d", i)})
		r.Attribute("sn", []string{"s"})
		r.Attribute("mail", []string{fmt.Sprintf("u%d@example.com", i)})
		if err := c.Add(r); err != nil {
			b.Fatal(err)
		}
	}
	c.Close()
	url, _ := startProxy(b, Config{Backend: backend(a, nil)})
	for _, target := range []struct{ name, url string }{{"proxy", url}, {"direct", a.URL}} {
		b.Run(target.name, func(b *testing.B) {
			cl := dialRaw(b, target.url)
			cl.do(b, bindOp(a.RootDN, a.RootPW))
			op := searchEqOp(a.Suffix, "cn", "u7", "cn", "mail")
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				if got := cl.do(b, op); len(got) != 2 {
					b.Fatalf("%d responses, want an entry and the result", len(got))
				}
			}
		})
	}
}
