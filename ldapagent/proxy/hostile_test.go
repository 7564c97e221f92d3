package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"
	"github.com/ldmirror/ldmirror/internal/logbuf"
	"github.com/ldmirror/ldmirror/internal/poll"
	"github.com/ldmirror/ldmirror/internal/slapdtest"
	"github.com/ldmirror/ldmirror/ldapagent/retrier"
	"github.com/ldmirror/ldmirror/ldapagent/retrier/wire"
)

// Hostile clients on 127.0.0.1 (issue 18, bounds): what they can make the
// proxy hold and how they are stopped. docs/retrier.md lists the limits.

// rss returns the resident set size of this process in bytes.
func rss(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	pages, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return pages * int64(os.Getpagesize())
}

// unread returns the bytes waiting in the receive queues of the TCP
// sockets bound to port (/proc/net/tcp): data the kernel has and the
// process has not read yet.
func unread(t *testing.T, port int) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, l := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(l)
		if len(f) < 5 || !strings.HasSuffix(f[1], fmt.Sprintf(":%04X", port)) {
			continue
		}
		_, rx, _ := strings.Cut(f[4], ":")
		v, _ := strconv.ParseInt(rx, 16, 64)
		n += v
	}
	return n
}

func bindRaw(t *testing.T, url string, a *slapdtest.Server) net.Conn {
	t.Helper()
	c := dialRaw(t, url)
	res := c.do(t, bindOp(a.RootDN, a.RootPW))
	if code := res[0].Children[1].Children[0].Value.(int64); code != 0 {
		t.Fatalf("bind: result %d", code)
	}
	return c.nc
}

// TestIdleClientsWithPartialMessages: 64 clients each send the first
// 64 KiB of a message that declares 4 MiB, and stay idle. The proxy must
// hold about what they sent, not what they declared: RSS grows by less
// than 32 MiB (it grew by 259 MiB when the declared length was allocated).
func TestIdleClientsWithPartialMessages(t *testing.T) {
	a := slapdtest.Start(t, slapdtest.Options{})
	url, _ := startProxy(t, Config{Backend: backend(a, nil)})
	_, portText, _ := net.SplitHostPort(strings.TrimPrefix(url, "ldap://"))
	port, _ := strconv.Atoi(portText)
	conns := make([]net.Conn, 64)
	for i := range conns {
		conns[i] = bindRaw(t, url, a)
	}
	runtime.GC()
	debug.FreeOSMemory()
	before := rss(t)
	declared := 4<<20 - 16
	head := []byte{0x30, 0x84, byte(declared >> 24), byte(declared >> 16), byte(declared >> 8), byte(declared)}
	body := append(head, bytes.Repeat([]byte{0x04}, 64<<10)...)
	for _, c := range conns {
		if _, err := c.Write(body); err != nil {
			t.Fatal(err)
		}
	}
	poll.Until(t, 20*time.Second, "the proxy to read what the clients sent", func() bool { return unread(t, port) == 0 })
	runtime.GC()
	grown := rss(t) - before
	t.Logf("RSS grew by %.1f MiB for 64 clients holding 64 KiB of a 4 MiB message each", float64(grown)/(1<<20))
	if grown > 32<<20 {
		t.Fatalf("RSS grew by %.1f MiB, want less than 32 MiB", float64(grown)/(1<<20))
	}
}

// TestClientThatStopsReading: a client starts a large search and reads
// nothing. The proxy's writes to it time out, it is dropped within the
// idle timeout, and its search stops on the server (the proxy abandons it
// and closes the client's server connections; slapd drops an Abandon that
// arrives just before the connection's end, and ends the search for the
// end instead); another client is served meanwhile.
func TestClientThatStopsReading(t *testing.T) {
	a := slapdtest.New(t, slapdtest.Options{NoSync: true, Monitor: true})
	var ldif strings.Builder
	fmt.Fprintf(&ldif, "dn: %s\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: example\n\n", a.Suffix)
	pad := strings.Repeat("x", 1000)
	for i := range 20000 {
		fmt.Fprintf(&ldif, "dn: cn=e%d,%s\nobjectClass: inetOrgPerson\ncn: e%d\nsn: s\ndescription: %s\n\n", i, a.Suffix, i, pad)
	}
	if err := a.Load(ldif.String()); err != nil {
		t.Fatal(err)
	}
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	const idle = 2 * time.Second
	var logs logbuf.Buffer
	url, srv := startProxy(t, Config{Backend: backend(a, nil), IdleTimeout: idle, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	nc := bindRaw(t, url, a)
	if _, err := nc.Write(message(2, searchEqOp(a.Suffix, "sn", "s"), nil)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	poll.Until(t, idle, "the search to run on the server", func() bool {
		ops, err := a.InProgress()
		return err == nil && ops["Search"] == 1
	})
	other := dialRaw(t, url)
	other.do(t, bindOp(a.RootDN, a.RootPW))
	if got := other.do(t, searchEqOp(a.Suffix, "cn", "e7")); len(got) != 2 {
		t.Fatalf("another client while one stops reading: %d responses", len(got))
	}
	other.nc.Close()
	poll.Until(t, 30*time.Second, "the client that stopped reading to be dropped", func() bool { return srv.clients() == 0 })
	t.Logf("dropped after %v", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(logs.String(), "client not reading") {
		t.Fatalf("the client was not dropped for not reading:\n%s", logs.String())
	}
	poll.Until(t, 10*time.Second, "the search to stop on the server", func() bool {
		ops, err := a.InProgress()
		return err == nil && ops["Search"] == 0
	})
}

// clients returns the number of client connections being served.
func (s *Server) clients() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// readNotice reads a Notice of Disconnection and then EOF from nc, and
// returns the notice's result code.
func readNotice(t *testing.T, nc net.Conn) int64 {
	t.Helper()
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(nc)
	msg, err := wire.Read(r, 1<<20)
	if err != nil {
		t.Fatalf("no Notice of Disconnection: %v", err)
	}
	p, err := ber.DecodePacketErr(msg)
	if err != nil || !bytes.Contains(msg, []byte(oidNoticeOfDisconnection)) {
		t.Fatalf("not a Notice of Disconnection: %x", msg)
	}
	// A reset is a close too: the proxy closed with the rest of the
	// client's message unread.
	if _, err := r.ReadByte(); err != io.EOF && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("connection not closed after the notice: %v", err)
	}
	return p.Children[1].Children[0].Value.(int64)
}

// TestMaxConnections: connections over the limit get a Notice of
// Disconnection (busy) at once instead of waiting; one closing makes room.
func TestMaxConnections(t *testing.T) {
	a := slapdtest.Start(t, slapdtest.Options{})
	url, srv := startProxy(t, Config{Backend: backend(a, nil), MaxConnections: 3})
	var held []*rawClient
	for range 3 {
		c := dialRaw(t, url)
		c.do(t, bindOp(a.RootDN, a.RootPW))
		held = append(held, c)
	}
	extra := dialRaw(t, url)
	if code := readNotice(t, extra.nc); code != codeBusy {
		t.Fatalf("connection over the limit: notice with result %d, want busy (51)", code)
	}
	held[0].nc.Close()
	poll.Until(t, 10*time.Second, "the closed connection to be gone", func() bool { return srv.clients() == 2 })
	again := dialRaw(t, url)
	again.do(t, bindOp(a.RootDN, a.RootPW))
}

// TestMaxOperationsPerConnection: with the limit in flight (their server
// never answers), the next operation is answered busy at once; it is not
// queued.
func TestMaxOperationsPerConnection(t *testing.T) {
	cfg := retrier.Config{Primary: frozenServer(t), CallTimeout: time.Minute, Logger: slog.New(slog.DiscardHandler)}
	url, srv := startProxy(t, Config{Backend: cfg, MaxOperations: 2})
	c := dialRaw(t, url)
	for id := range int64(3) {
		if _, err := c.nc.Write(message(id+1, searchEqOp("dc=example,dc=com", "cn", "x"), nil)); err != nil {
			t.Fatal(err)
		}
	}
	_ = c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	msg, err := wire.Read(c.r, 1<<20)
	if err != nil {
		t.Fatalf("no answer to the operation over the limit: %v", err)
	}
	m, _ := wire.Split(msg)
	code, _, diag, _ := wire.Result(m.Op)
	if m.ID != 3 || code != codeBusy {
		t.Fatalf("message %d result %d (%s); want message 3 busy (51)", m.ID, code, diag)
	}
	// A client that goes away takes its operations with it.
	c.nc.Close()
	poll.Until(t, 10*time.Second, "the operations of the closed connection to end", func() bool { return srv.ops.InFlight() == 0 })
}

// TestUnboundMessageLimit: before a bind with a DN and password a request
// may be at most MaxUnboundMessageSize; after it, MaxMessageSize.
func TestUnboundMessageLimit(t *testing.T) {
	a := slapdtest.Start(t, slapdtest.Options{})
	url, _ := startProxy(t, Config{Backend: backend(a, nil)})
	big := ldap.NewAddRequest("cn=big,"+a.Suffix, nil)
	add := ber.Encode(ber.ClassApplication, ber.TypeConstructed, tagAdd, nil, "")
	add.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, big.DN, ""))
	attrs := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "")
	for _, kv := range [][2]string{{"objectClass", "inetOrgPerson"}, {"cn", "big"}, {"sn", "s"}, {"description", strings.Repeat("x", 300<<10)}} {
		at := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "")
		at.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, kv[0], ""))
		set := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSet, nil, "")
		set.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, kv[1], ""))
		at.AppendChild(set)
		attrs.AppendChild(at)
	}
	add.AppendChild(attrs)

	unbound := dialRaw(t, url)
	if _, err := unbound.nc.Write(message(1, add, nil)); err != nil {
		t.Fatal(err)
	}
	if code := readNotice(t, unbound.nc); code != codeProtocolError {
		t.Fatalf("300 KiB request before a bind: notice %d, want protocolError (2)", code)
	}
	bound := dialRaw(t, url)
	bound.do(t, bindOp(a.RootDN, a.RootPW))
	res := bound.do(t, add)
	if code := res[0].Children[1].Children[0].Value.(int64); code != 0 {
		t.Fatalf("300 KiB add after a bind: result %d, want success", code)
	}
}
