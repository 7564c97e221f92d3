package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
	"github.com/ldmirror/ldmirror/internal/logbuf"
	"github.com/ldmirror/ldmirror/internal/poll"
	"github.com/ldmirror/ldmirror/internal/slapdtest"
	"github.com/ldmirror/ldmirror/ldapagent/retrier"
)

// frozenServer accepts TCP connections (the kernel completes the handshake
// into the listen backlog) and never answers: a stopped or hung slapd.
func frozenServer(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return "ldap://" + l.Addr().String()
}

// TestFrozenPrimary (issue 18, defect 1): a primary that accepts
// connections and never answers costs a call at most --attempt-timeout,
// and never its whole deadline: the secondary answers within the call's
// deadline.
func TestFrozenPrimary(t *testing.T) {
	b := slapdtest.Start(t, slapdtest.Options{})
	cases := []struct {
		name          string
		call, attempt time.Duration
		within        time.Duration
	}{
		{"call deadline shorter than the attempt timeout", 2 * time.Second, 10 * time.Second, 2 * time.Second},
		{"attempt timeout shorter than the call deadline", 20 * time.Second, 300 * time.Millisecond, 2 * time.Second},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := retrier.Config{Primary: frozenServer(t), Secondary: b.URL, CallTimeout: c.call,
				AttemptTimeout: c.attempt, FailbackInterval: -1, Logger: slog.New(slog.DiscardHandler)}
			url, _ := startProxy(t, Config{Backend: cfg})
			cl, err := ldap.DialURL(url)
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			start := time.Now()
			err = cl.Bind(b.RootDN, b.RootPW)
			if d := time.Since(start); err != nil || d > c.within {
				t.Fatalf("bind with a frozen primary: %v after %v; want success on the secondary within %v", err, d, c.within)
			}
		})
	}
}

// tlsBackend is a TLS-speaking LDAP server in front of slapd a: another
// proxy with a certificate for 127.0.0.1, offering StartTLS on its
// ldap:// URL and TLS from the first byte on its ldaps:// URL. It returns
// both URLs and a client config that trusts the certificate.
func tlsBackend(t *testing.T, a *slapdtest.Server) (ldapURL, ldapsURL string, trust *tls.Config) {
	t.Helper()
	serverTLS, clientTLS := selfSigned(t)
	clientTLS.Certificates = serverTLS.Certificates // for tests that write the CA file
	ldapURL, _ = startProxy(t, Config{Backend: backend(a, nil), TLS: serverTLS})
	srv, err := New(Config{Backend: backend(a, nil), TLS: serverTLS, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(tls.NewListener(l, serverTLS)) }()
	t.Cleanup(func() {
		_ = srv.Shutdown(t.Context())
		<-done
	})
	return ldapURL, "ldaps://" + l.Addr().String(), clientTLS
}

// TestBackendTLSMatrix: the proxy reaches its servers over plain LDAP,
// StartTLS (issue 18, defect 2: the server name comes from the URL), LDAPS
// and ldapi; the CA is given as --backend-ca gives it, without a server
// name.
func TestBackendTLSMatrix(t *testing.T) {
	a := slapdtest.Start(t, slapdtest.Options{})
	starttlsURL, ldapsURL, trust := tlsBackend(t, a)
	ca := &tls.Config{RootCAs: trust.RootCAs}
	cases := []struct {
		name     string
		url      string
		starttls bool
		tls      *tls.Config
	}{
		{"plain", a.URL, false, nil},
		{"StartTLS", starttlsURL, true, ca},
		{"LDAPS", ldapsURL, false, ca},
		{"ldapi", "ldapi://" + url.PathEscape(a.LDAPIPath), false, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := backend(a, nil)
			cfg.Primary, cfg.StartTLS, cfg.TLS, cfg.CallTimeout = c.url, c.starttls, c.tls, 3*time.Second
			url, _ := startProxy(t, Config{Backend: cfg})
			cl, err := ldap.DialURL(url)
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			if err := cl.Bind(a.RootDN, a.RootPW); err != nil {
				t.Fatalf("bind through a %s backend: %v", c.name, err)
			}
			if ok, err := cl.Compare(a.Suffix, "o", "example"); err != nil || !ok {
				t.Fatalf("compare through a %s backend: %v %v", c.name, ok, err)
			}
		})
	}
}

// TestBackendCertificateNotTrusted (issue 18, defect 3): a server
// certificate that does not verify is a configuration error: the call
// fails at once with the x509 message instead of being retried until its
// deadline, and it is logged once.
func TestBackendCertificateNotTrusted(t *testing.T) {
	a := slapdtest.Start(t, slapdtest.Options{})
	starttlsURL, ldapsURL, _ := tlsBackend(t, a)
	for _, c := range []struct {
		name     string
		url      string
		starttls bool
	}{{"StartTLS", starttlsURL, true}, {"LDAPS", ldapsURL, false}} {
		t.Run(c.name, func(t *testing.T) {
			logs := &slapdtest.Log{}
			cfg := backend(a, nil)
			cfg.Primary, cfg.StartTLS = c.url, c.starttls
			cfg.TLS = &tls.Config{RootCAs: x509.NewCertPool()} // trusts nothing
			cfg.CallTimeout = 10 * time.Second
			cfg.Logger = nil // the proxy's
			url, _ := startProxy(t, Config{Backend: cfg, Logger: slog.New(logs)})
			for range 2 {
				cl, err := ldap.DialURL(url)
				if err != nil {
					t.Fatal(err)
				}
				start := time.Now()
				err = cl.Bind(a.RootDN, a.RootPW)
				d := time.Since(start)
				cl.Close()
				var le *ldap.Error
				if !errors.As(err, &le) || !strings.Contains(err.Error(), "x509") {
					t.Fatalf("bind: %v; want an LDAP error with the x509 message", err)
				}
				if d > 2*time.Second {
					t.Fatalf("bind failed after %v; want at once, not retried until the deadline", d)
				}
			}
			if n := logs.Count("x509"); n != 1 {
				t.Fatalf("x509 error logged %d times, want once", n)
			}
		})
	}
}

// TestBackendStartTLSFlags runs the binary as an operator would (issue
// 18, defect 2: "--backend-starttls never works"): --backend-starttls with
// --backend-ca and no server name.
func TestBackendStartTLSFlags(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: builds ldmirror")
	}
	skipWithoutTools(t)
	bin := buildBinary(t)
	a := slapdtest.Start(t, slapdtest.Options{})
	starttlsURL, _, trust := tlsBackend(t, a)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	pemData := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: trust.Certificates[0].Certificate[0]})
	if err := os.WriteFile(ca, pemData, 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	var stderr logbuf.Buffer
	p := exec.Command(bin, "retrier", "--listen", "ldap://"+addr, "--primary", starttlsURL,
		"--backend-starttls", "--backend-ca", ca, "--call-timeout", "5s")
	p.Stderr = &stderr
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Process.Kill(); _ = p.Wait() })
	poll.Until(t, 10*time.Second, "the proxy to listen", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	if out, code := tool(t, "", "ldapwhoami", admin("ldap://"+addr, a)...); code != 0 {
		t.Fatalf("ldapwhoami through --backend-starttls: exit %d: %s\n%s", code, out, stderr.String())
	}
}
