package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
	"github.com/ldmirror/ldmirror/internal/slapdtest"
	"github.com/ldmirror/ldmirror/ldapagent/retrier"
)

// startProxy runs a proxy in-process on a free port and returns its URL.
func startProxy(t testing.TB, cfg Config) (string, *Server) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := serveOn(t, cfg, l)
	return "ldap://" + l.Addr().String(), srv
}

// serveOn runs a proxy in-process on l until the test ends.
func serveOn(t testing.TB, cfg Config, l net.Listener) *Server {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
	})
	return srv
}

func backend(a, b *slapdtest.Server) retrier.Config {
	cfg := retrier.Config{Primary: a.URL, CallTimeout: 10 * time.Second, Logger: slog.New(slog.DiscardHandler)}
	if b != nil {
		cfg.Secondary = b.URL
	}
	return cfg
}

// skipWithoutTools skips when ldap-utils are missing.
func skipWithoutTools(t testing.TB) {
	t.Helper()
	slapdtest.SkipIfMissing(t)
	if _, err := exec.LookPath("ldapadd"); err != nil {
		t.Skip("ldap-utils not installed: apt-get install ldap-utils")
	}
}

// tool runs an ldap-utils program and returns its output and LDAP exit
// code (0 success, else the result code).
func tool(t testing.TB, stdin string, name string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "LDAPNOINIT=1")
	cmd.Stdin = strings.NewReader(stdin)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return out.String(), 0
	case errors.As(err, &ee):
		return out.String(), ee.ExitCode()
	}
	t.Fatalf("%s: %v", name, err)
	return "", -1
}

// admin returns the ldap-utils arguments to bind as srv's root DN at url.
func admin(url string, srv *slapdtest.Server) []string {
	return []string{"-x", "-H", url, "-D", srv.RootDN, "-w", srv.RootPW}
}

func readEntry(t testing.TB, srv *slapdtest.Server, dn string) (*ldap.Entry, error) {
	t.Helper()
	c, err := srv.Dial()
	if err != nil {
		t.Fatalf("dial %s: %v", srv.URL, err)
	}
	defer c.Close()
	res, err := c.Search(ldap.NewSearchRequest(dn, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 0, false, "(objectClass=*)", []string{"*"}, nil))
	if err != nil {
		return nil, err
	}
	return res.Entries[0], nil
}

func personLDIF(dn, cn, sn string, extra ...string) string {
	s := fmt.Sprintf("dn: %s\nobjectClass: inetOrgPerson\ncn: %s\nsn: %s\n", dn, cn, sn)
	for i := 0; i+1 < len(extra); i += 2 {
		s += extra[i] + ": " + extra[i+1] + "\n"
	}
	return s + "\n"
}
