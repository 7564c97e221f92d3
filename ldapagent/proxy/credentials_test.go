package proxy

import (
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
	"github.com/ldmirror/ldmirror/internal/poll"
	"github.com/ldmirror/ldmirror/internal/slapdtest"
)

// TestRequireTLSForBind: a bind with a password on a plain connection is
// refused with confidentialityRequired and never reaches a server; after
// StartTLS, over LDAPS-like TLS, on a unix socket, and anonymously, binds
// go through.
func TestRequireTLSForBind(t *testing.T) {
	a := slapdtest.Start(t, slapdtest.Options{Monitor: true})
	serverTLS, clientTLS := selfSigned(t)
	cfg := Config{Backend: backend(a, nil), TLS: serverTLS, RequireTLSForBind: true}
	addr, _ := startProxy(t, cfg)

	before, err := a.Operations()
	if err != nil {
		t.Fatal(err)
	}
	plain, err := ldap.DialURL(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if err := plain.Bind(a.RootDN, a.RootPW); !ldap.IsErrorWithCode(err, ldap.LDAPResultConfidentialityRequired) {
		t.Fatalf("bind with a password without TLS: %v, want confidentialityRequired (13)", err)
	}
	after, err := a.Operations()
	if err != nil {
		t.Fatal(err)
	}
	if after["Bind"] != before["Bind"]+1 { // the counter read's own
		t.Fatalf("the refused bind reached the server")
	}
	if err := plain.UnauthenticatedBind(""); err != nil {
		t.Fatalf("anonymous bind without TLS: %v", err)
	}

	secure, err := ldap.DialURL(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer secure.Close()
	if err := secure.StartTLS(clientTLS); err != nil {
		t.Fatal(err)
	}
	if err := secure.Bind(a.RootDN, a.RootPW); err != nil {
		t.Fatalf("bind after StartTLS: %v", err)
	}

	dir, err := os.MkdirTemp("", "proxy-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "ldapi")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	serveOn(t, cfg, l)
	local, err := ldap.DialURL("ldapi://" + url.PathEscape(sock))
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	if err := local.Bind(a.RootDN, a.RootPW); err != nil {
		t.Fatalf("bind on a unix socket: %v", err)
	}
}

// TestSessionLifetime: a connection ends its session lifetime after its
// bind with a Notice of Disconnection (unavailable), and its session is
// closed, which zeroes the password kept for replay.
func TestSessionLifetime(t *testing.T) {
	a := slapdtest.Start(t, slapdtest.Options{})
	url, srv := startProxy(t, Config{Backend: backend(a, nil), SessionLifetime: 500 * time.Millisecond})
	c := dialRaw(t, url)
	c.do(t, bindOp(a.RootDN, a.RootPW))
	if got := c.do(t, searchEqOp(a.Suffix, "o", "example")); len(got) != 2 {
		t.Fatalf("search within the lifetime: %d responses", len(got))
	}
	if code := readNotice(t, c.nc); code != codeUnavailable {
		t.Fatalf("end of the lifetime: notice %d, want unavailable (52)", code)
	}
	poll.Until(t, 10*time.Second, "the connection and its session to be closed", func() bool { return srv.clients() == 0 })
}
