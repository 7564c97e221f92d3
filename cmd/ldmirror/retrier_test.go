package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/ldapagent/proxy"
	"github.com/urfave/cli/v2"
)

// TestListenLDAPI (issue 18, defect 5): --listen ldapi://<escaped path>
// listens on that unix socket.
func TestListenLDAPI(t *testing.T) {
	dir, err := os.MkdirTemp("", "ldapi-") // short: socket paths are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "proxy.sock")
	l, err := listen("ldapi://"+url.PathEscape(sock), nil)
	if err != nil {
		t.Fatalf("listen ldapi: %v", err)
	}
	defer l.Close()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("dial %s: %v", sock, err)
	}
	c.Close()
}

// TestListenUnsupportedScheme: the message names the schemes that work.
func TestListenUnsupportedScheme(t *testing.T) {
	_, err := listen("cldap://127.0.0.1:389", nil)
	if err == nil || !strings.Contains(err.Error(), "ldap://, ldaps:// or ldapi://") {
		t.Fatalf("err = %v, want one naming ldap://, ldaps:// or ldapi://", err)
	}
}

// TestListenLDAPIStaleSocket: a socket file left by a proxy that died is
// replaced; one that a running process answers on is refused.
func TestListenLDAPIStaleSocket(t *testing.T) {
	dir, err := os.MkdirTemp("", "ldapi-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "s")
	u := "ldapi://" + url.PathEscape(sock)
	old, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := listen(u, nil); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("listen on a socket in use: %v, want an error saying so", err)
	}
	old.SetUnlinkOnClose(false)
	old.Close() // the file stays, as after a crash
	l, err := listen(u, nil)
	if err != nil {
		t.Fatalf("listen over a stale socket: %v", err)
	}
	l.Close()
}

// TestRequireTLSForBindDefault: on when the proxy has a certificate,
// unless the flag says otherwise.
func TestRequireTLSForBindDefault(t *testing.T) {
	cert, key := writeCertificate(t)
	cases := []struct {
		args []string
		want bool
	}{
		{nil, false},
		{[]string{"--tls-cert", cert, "--tls-key", key}, true},
		{[]string{"--tls-cert", cert, "--tls-key", key, "--require-tls-for-bind=false"}, false},
		{[]string{"--require-tls-for-bind"}, true},
	}
	for _, c := range cases {
		cmd := retrierCommand()
		var got proxy.Config
		cmd.Action = func(cc *cli.Context) error {
			var err error
			got, err = proxyConfig(cc, slog.New(slog.DiscardHandler))
			return err
		}
		app := &cli.App{Commands: []*cli.Command{cmd}}
		args := append([]string{"ldmirror", "retrier", "--primary", "ldap://127.0.0.1:1"}, c.args...)
		if err := app.Run(args); err != nil {
			t.Fatalf("%v: %v", c.args, err)
		}
		if got.RequireTLSForBind != c.want {
			t.Errorf("%v: RequireTLSForBind = %v, want %v", c.args, got.RequireTLSForBind, c.want)
		}
	}
}

// writeCertificate writes a self-signed certificate and its key as PEM
// files and returns their paths.
func writeCertificate(t *testing.T) (cert, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "proxy"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cert, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, key
}
