package retrier

import (
	"context"
	"net"
	"testing"
	"time"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"
)

// A search attempt on a connection that closes between the moment the
// session hands it out and the moment the search starts (the server died
// just before) must fail with a retryable connection error. go-ldap ends
// such a search without sending it and without an error: TestSoak saw it
// as "client 3 search: 0 entries, model 51", a successful empty search
// during a failover.
func TestSearchOnClosingConnectionIsRetried(t *testing.T) {
	client, server := net.Pipe()
	defer server.Close()
	c := ldap.NewConn(client, false)
	c.Start()
	c.Close() // what go-ldap's reader does when the server's socket hits EOF
	if !c.IsClosing() {
		t.Fatal("connection not closing after Close")
	}
	seen := map[string]bool{}
	entries := 0
	err := searchAttempt(context.Background(), c, testSearch(), seen, &ldap.SearchResult{}, func(*ldap.Entry) error {
		entries++
		return nil
	})
	if err == nil {
		t.Fatalf("search on a closed connection succeeded with %d entries; want a connection error", entries)
	}
	if !Retryable(err, false) || !connectionError(err) {
		t.Fatalf("err = %v: want a retryable connection error (redial, then the other server)", err)
	}
}

// A search whose result arrived in full stays a success even if the server
// closes the connection right after: retrying it would delay the caller,
// or fail it if both servers are down, for results it already has.
func TestSearchCompletedBeforeCloseSucceeds(t *testing.T) {
	client, server := net.Pipe()
	defer server.Close()
	c := ldap.NewConn(client, false)
	c.Start()
	defer c.Close()
	go func() {
		req, err := ber.ReadPacket(server)
		if err != nil {
			return
		}
		id := req.Children[0].Value.(int64)
		entry := ber.Encode(ber.ClassApplication, ber.TypeConstructed, ldap.ApplicationSearchResultEntry, nil, "")
		entry.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, "cn=a,dc=example,dc=com", ""))
		entry.AppendChild(ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, ""))
		done := ber.Encode(ber.ClassApplication, ber.TypeConstructed, ldap.ApplicationSearchResultDone, nil, "")
		done.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, 0, ""))
		done.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, "", ""))
		done.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, "", ""))
		for _, op := range []*ber.Packet{entry, done} {
			msg := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "")
			msg.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, id, ""))
			msg.AppendChild(op)
			if _, err := server.Write(msg.Bytes()); err != nil {
				return
			}
		}
		server.Close() // the server dies right after answering
	}()
	var got []string
	err := searchAttempt(context.Background(), c, testSearch(), map[string]bool{}, &ldap.SearchResult{}, func(e *ldap.Entry) error {
		got = append(got, e.DN)
		// Hold the stream until go-ldap has seen the close, so that the
		// end of the search is read on a closing connection.
		deadline := time.Now().Add(10 * time.Second)
		for !c.IsClosing() && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond) // polling interval of a condition wait
		}
		if !c.IsClosing() {
			t.Error("connection not closing 10 s after the server closed it")
		}
		return nil
	})
	if err != nil || len(got) != 1 {
		t.Fatalf("search: %v, entries %v; want success with cn=a", err, got)
	}
}

func testSearch() *ldap.SearchRequest {
	return ldap.NewSearchRequest("dc=example,dc=com", ldap.ScopeSingleLevel, ldap.NeverDerefAliases, 0, 0, false, "(cn=*)", nil, nil)
}
