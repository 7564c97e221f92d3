package retrier

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"testing"
	"time"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"
	"github.com/ldmirror/ldmirror/internal/poll"
	"github.com/ldmirror/ldmirror/ldapagent/retrier/wire"
)

// Scripted LDAP servers, for what slapd cannot be made to do on cue.

func resultOp(tag ber.Tag, code int64) []byte {
	op := application(tag)
	op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, code, ""))
	op.AppendChild(str(""))
	op.AppendChild(str(""))
	return op.Bytes()
}

func entryOp(dn string) []byte {
	op := application(ldap.ApplicationSearchResultEntry)
	op.AppendChild(str(dn))
	attrs := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "")
	attrs.AppendChild(attributeList("cn", []string{dn}))
	op.AppendChild(attrs)
	return op.Bytes()
}

// fakeServer accepts connections on 127.0.0.1 and runs serve on each; it
// answers binds with success itself.
func fakeServer(t *testing.T, serve func(nc net.Conn, r *bufio.Reader, m wire.Message)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer nc.Close()
				r := bufio.NewReader(nc)
				for {
					msg, err := wire.Read(r, 1<<20)
					if err != nil {
						return
					}
					m, err := wire.Split(msg)
					if err != nil {
						return
					}
					if m.Op[0] == 0x60 { // bind
						_, _ = nc.Write(wire.Append(nil, m.ID, resultOp(ldap.ApplicationBindResponse, 0), nil))
						continue
					}
					serve(nc, r, m)
				}
			}()
		}
	}()
	return "ldap://" + l.Addr().String()
}

func quietConfig(primary, secondary string) Config {
	return Config{Primary: primary, Secondary: secondary, CallTimeout: 10 * time.Second,
		FailbackInterval: -1, Logger: slog.New(slog.DiscardHandler)}
}

// TestSearchRerunSkipsDeliveredEntries: the primary dies after two entries
// of a search; the secondary runs it again and the caller gets every entry
// once.
func TestSearchRerunSkipsDeliveredEntries(t *testing.T) {
	dying := fakeServer(t, func(nc net.Conn, _ *bufio.Reader, m wire.Message) {
		for _, dn := range []string{"cn=e1", "cn=e2"} {
			_, _ = nc.Write(wire.Append(nil, m.ID, entryOp(dn), nil))
		}
		nc.Close()
	})
	healthy := fakeServer(t, func(nc net.Conn, _ *bufio.Reader, m wire.Message) {
		for _, dn := range []string{"cn=e1", "cn=e2", "cn=e3"} {
			_, _ = nc.Write(wire.Append(nil, m.ID, entryOp(dn), nil))
		}
		_, _ = nc.Write(wire.Append(nil, m.ID, resultOp(ldap.ApplicationSearchResultDone, 0), nil))
	})
	s, err := OpenLazy(quietConfig(dying, healthy))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	res, err := s.Search(context.Background(), ldap.NewSearchRequest("", ldap.ScopeWholeSubtree, 0, 0, 0, false, "(cn=*)", nil, nil))
	if err != nil {
		t.Fatal(err)
	}
	var dns []string
	for _, e := range res.Entries {
		dns = append(dns, e.DN)
	}
	if !slices.Equal(dns, []string{"cn=e1", "cn=e2", "cn=e3"}) {
		t.Fatalf("entries %v, want each of e1 e2 e3 once", dns)
	}
}

// TestCancelAbandonsOnServer: a call whose context ends while the server
// works on it tells the server to stop (AbandonRequest with its message
// ID), and the connection serves the next call.
func TestCancelAbandonsOnServer(t *testing.T) {
	abandoned := make(chan int64, 1)
	var searchID int64
	url := fakeServer(t, func(nc net.Conn, _ *bufio.Reader, m wire.Message) {
		switch m.Op[0] {
		case wire.TagSearchRequest:
			searchID = m.ID
			_, _ = nc.Write(wire.Append(nil, m.ID, entryOp("cn=first"), nil))
		case 0x50: // abandon
			id, _ := ber.ParseInt64(m.Op[2:])
			abandoned <- id
		case wire.TagCompareRequest:
			_, _ = nc.Write(wire.Append(nil, m.ID, resultOp(ldap.ApplicationCompareResponse, ldap.LDAPResultCompareTrue), nil))
		}
	})
	s, err := OpenLazy(quietConfig(url, ""))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	_, err = s.SearchEach(ctx, ldap.NewSearchRequest("", ldap.ScopeWholeSubtree, 0, 0, 0, false, "(cn=*)", nil, nil),
		func(*ldap.Entry) error { cancel(); return nil })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled search: err = %v, want context.Canceled", err)
	}
	select {
	case id := <-abandoned:
		if id != searchID {
			t.Fatalf("abandoned message %d, the search was %d", id, searchID)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no AbandonRequest reached the server")
	}
	if ok, err := s.Compare(context.Background(), "cn=x", "cn", "x"); err != nil || !ok {
		t.Fatalf("call after the abandon: %v %v", ok, err)
	}
}

// TestResponsesBackPressure: responses of an operation whose caller does
// not take them wait in its buffer while another operation's call reads
// the connection; when the buffer is full, the connection is not read
// further, so the server's writes block instead of the responses filling
// memory. net.Pipe has no buffer: each server write completes only when
// it has been read.
func TestResponsesBackPressure(t *testing.T) {
	client, server := net.Pipe()
	c := newConn(client, "pipe", 0)
	defer c.close()
	written := make(chan int, 1)
	go func() {
		r := bufio.NewReader(server)
		var ids []int64
		for range 2 {
			msg, err := wire.Read(r, 1<<20)
			if err != nil {
				written <- -1
				return
			}
			m, _ := wire.Split(msg)
			ids = append(ids, m.ID)
		}
		n := 0
		for ; n < 1000; n++ {
			// How long a write may wait for a reader before the server
			// counts the connection as stopped.
			_ = server.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
			if _, err := server.Write(wire.Append(nil, ids[0], entryOp(fmt.Sprintf("cn=e%d", n)), nil)); err != nil {
				break
			}
		}
		written <- n
	}()
	ctx := context.Background()
	slow, err := c.send(ctx, resultOp(ldap.ApplicationSearchRequest, 0), nil)
	if err != nil {
		t.Fatal(err)
	}
	other, err := c.send(ctx, resultOp(ldap.ApplicationCompareRequest, 0), nil)
	if err != nil {
		t.Fatal(err)
	}
	// other's call reads, and routes slow's entries until slow's buffer
	// is full; then it waits, and the server cannot write.
	readErr := make(chan error, 1)
	go func() {
		_, err := c.recv(ctx, other, 30*time.Second)
		readErr <- err
	}()
	n := <-written
	if n < respBuffer || n > respBuffer+2 {
		t.Fatalf("the server wrote %d responses nobody took; want %d to %d", n, respBuffer, respBuffer+2)
	}
	for i := range respBuffer {
		msg, err := c.recv(ctx, slow, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		m, _ := wire.Split(msg)
		if dn, _ := wire.First(m.Op); string(dn) != fmt.Sprintf("cn=e%d", i) {
			t.Fatalf("response %d is %s", i, dn)
		}
	}
	c.finish(slow, false)
	c.close()
	if err := <-readErr; err == nil {
		t.Fatal("the other call got a response from a closed connection")
	}
}

// TestNoticeOfDisconnection: an unsolicited notice ends the connection;
// an operation waiting on it fails with a network error (retried
// elsewhere).
func TestNoticeOfDisconnection(t *testing.T) {
	client, server := net.Pipe()
	c := newConn(client, "pipe", 0)
	defer c.close()
	go func() {
		_, _ = wire.Read(bufio.NewReader(server), 1<<20)
		_, _ = server.Write(wire.Append(nil, 0, resultOp(ldap.ApplicationExtendedResponse, ldap.LDAPResultUnavailable), nil))
	}()
	x, err := c.send(context.Background(), resultOp(ldap.ApplicationSearchRequest, 0), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.recv(context.Background(), x, 10*time.Second)
	if !connectionError(err) || !Retryable(err, true) {
		t.Fatalf("err = %v, want a retryable connection error", err)
	}
	if c.alive() {
		t.Fatal("connection alive after a Notice of Disconnection")
	}
}

// TestStaleConnectionNoticed: a connection the server closed while nobody
// read it is found dead before a request is sent on it, so the request
// does not cost an attempt (and a failover) on it.
func TestStaleConnectionNoticed(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	nc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	srv, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	c := newConn(nc, "tcp", 0)
	defer c.close()
	c.mu.Lock()
	c.lastRead = time.Now().Add(-2 * staleAfter)
	c.mu.Unlock()
	if err := c.checkStale(); err != nil || !c.alive() {
		t.Fatalf("sound idle connection: %v, alive %v", err, c.alive())
	}
	srv.Close() // as a server's idle timeout does
	c.mu.Lock()
	c.lastRead = time.Now().Add(-2 * staleAfter)
	c.mu.Unlock()
	poll.Until(t, 5*time.Second, "the close to be noticed", func() bool { return c.checkStale() != nil })
	if c.alive() {
		t.Fatal("connection alive after the server closed it")
	}
}
