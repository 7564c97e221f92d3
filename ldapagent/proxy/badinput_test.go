package proxy

import (
	"bufio"
	"bytes"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/internal/poll"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"
	"github.com/ldmirror/ldmirror/internal/slapdtest"
)

// badInputs are client messages that must close the connection; reason is
// a substring of the logged reason.
var badInputs = []struct {
	name   string
	msg    []byte
	reason string
}{
	{"not a sequence", []byte{0x04, 0x00}, "malformed message: tag 0x04"},
	{"indefinite length", []byte{0x30, 0x80, 0x00, 0x00}, "indefinite length"},
	{"declared 256 MiB", []byte{0x30, 0x84, 0x10, 0x00, 0x00, 0x00}, "larger than the limit"},
	{"oversized message", append([]byte{0x30, 0x82, 0x08, 0x00}, make([]byte, 0x800)...), "larger than the limit"},
	{"bad inner length", []byte{0x30, 0x05, 0x02, 0x09, 0x01, 0x01, 0x01}, "malformed message"},
	{"no operation", []byte{0x30, 0x03, 0x02, 0x01, 0x01}, "no operation"},
	{"unknown operation", []byte{0x30, 0x05, 0x02, 0x01, 0x01, 0x7e, 0x00}, "unknown operation: application tag 30"},
	{"response sent as request", []byte{0x30, 0x05, 0x02, 0x01, 0x01, 0x61, 0x00}, "unknown operation: application tag 1"},
	{"bind with bad version", []byte{0x30, 0x0b, 0x02, 0x01, 0x01, 0x60, 0x06, 0x04, 0x00, 0x04, 0x00, 0x80, 0x00}, "malformed message: Bind Request"},
	{"search with empty equality filter", searchWithFilter(ber.Encode(ber.ClassContext, ber.TypeConstructed, 3, nil, "")), "malformed message: Search Request"},
	{"search with empty filter", searchWithFilter(ber.Encode(ber.ClassContext, ber.TypeConstructed, 31, nil, "")), "malformed message: Search Request"},
}

func searchWithFilter(f *ber.Packet) []byte {
	op := ber.Encode(ber.ClassApplication, ber.TypeConstructed, tagSearch, nil, "")
	op.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, "", ""))
	for _, v := range []int64{0, 0, 0, 0} {
		op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, v, ""))
	}
	op.AppendChild(ber.NewBoolean(ber.ClassUniversal, ber.TypePrimitive, ber.TagBoolean, false, ""))
	op.AppendChild(f)
	op.AppendChild(ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, ""))
	p := envelope(7)
	p.AppendChild(op)
	return p.Bytes()
}

// TestBadInputClosesOnlyThatConnection: each bad message closes its
// connection with a Notice of Disconnection and a logged reason; a client
// on another connection keeps working.
func TestBadInputClosesOnlyThatConnection(t *testing.T) {
	a := slapdtest.Start(t, slapdtest.Options{})
	logs := &slapdtest.Log{}
	url, _ := startProxy(t, Config{Backend: backend(a, nil), MaxMessageSize: 1024, Logger: slog.New(logs)})
	good, err := ldap.DialURL(url)
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	if err := good.Bind(a.RootDN, a.RootPW); err != nil {
		t.Fatal(err)
	}
	addr := strings.TrimPrefix(url, "ldap://")
	for _, c := range badInputs {
		t.Run(c.name, func(t *testing.T) {
			nc, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			_ = nc.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := nc.Write(c.msg); err != nil {
				t.Fatal(err)
			}
			p, err := ber.ReadPacket(bufio.NewReader(nc))
			if err != nil {
				t.Fatalf("no Notice of Disconnection: %v", err)
			}
			if len(p.Children) < 2 || !bytes.Contains(p.Bytes(), []byte(oidNoticeOfDisconnection)) {
				t.Fatalf("reply is not a Notice of Disconnection: %x", p.Bytes())
			}
			if _, err := nc.Read(make([]byte, 1)); err != io.EOF {
				t.Fatalf("connection not closed after bad input: %v", err)
			}
			poll.Until(t, 5*time.Second, "the logged reason", func() bool {
				return logs.Count("client connection closed", c.reason) > 0
			})
			if ok, err := good.Compare(a.Suffix, "o", "example"); err != nil || !ok {
				t.Fatalf("other client after bad input: %v %v", ok, err)
			}
		})
	}
}
