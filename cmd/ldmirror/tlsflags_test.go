package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ldmirror/ldmirror/internal/logbuf"
	"github.com/ldmirror/ldmirror/internal/pkitest"
	"github.com/ldmirror/ldmirror/pki"
)

// run runs the CLI with args and returns its error.
func runCLI(args ...string) error {
	return newApp().Run(append([]string{"ldmirror"}, args...))
}

// TestCLIRefusals: node IDs outside [A-Za-z0-9._-]{1,64}, a secret file
// others may read, a secret without the plaintext flag, a peer without a
// certificate, and a witness given the old shared secret are refused, each
// with what to do.
func TestCLIRefusals(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte("0123456789abcdef0123\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	pkiDir := filepath.Join(dir, "pki")
	if err := runCLI("pki", "init", "--dir", pkiDir); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"daemon", "--dir", dir, "--node-id", "a/b", "--role", "primary"}, `invalid node id "a/b"`},
		{[]string{"daemon", "--dir", dir, "--node-id", strings.Repeat("x", 65), "--role", "primary"}, "invalid node id"},
		{[]string{"pki", "issue", "--dir", pkiDir, "a b"}, `invalid node id "a b"`},
		{[]string{"daemon", "--dir", dir, "--node-id", "a", "--role", "primary", "--peer", "127.0.0.1:1", "--insecure-plaintext-link", "--secret-file", secret}, "chmod 600 " + secret},
		{[]string{"daemon", "--dir", dir, "--node-id", "a", "--role", "primary", "--peer", "127.0.0.1:1", "--secret-file", secret}, "--secret-file is used only with --insecure-plaintext-link"},
		{[]string{"daemon", "--dir", dir, "--node-id", "a", "--role", "primary", "--peer", "127.0.0.1:1"}, "this node needs its certificate: --tls-dir DIR"},
		{[]string{"daemon", "--dir", dir, "--node-id", "a", "--role", "primary", "--peer", "127.0.0.1:1", "--tls-dir", pkiDir}, "a.key: no such file"},
		{[]string{"daemon", "--dir", dir, "--node-id", "a", "--role", "primary", "--peer", "127.0.0.1:1", "--tls-cert", "x.crt"}, "--tls-cert, --tls-key and --tls-ca are all needed"},
		{[]string{"witness", "--data-dir", dir, "--node-id", "w", "--bind", "127.0.0.1:0", "--secret-file", secret}, "members no longer share a secret"},
		{[]string{"witness", "--data-dir", dir, "--node-id", "w", "--bind", "127.0.0.1:0"}, "this node needs its certificate"},
	} {
		err := runCLI(tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ldmirror %s: %v, want %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
}

// TestPKICommands: pki init and issue leave a 0700 directory of 0600
// files that a witness's flags load as a witness.
func TestPKICommands(t *testing.T) {
	d := filepath.Join(t.TempDir(), "pki")
	for _, args := range [][]string{{"pki", "init", "--dir", d}, {"pki", "issue", "--dir", d, "a"}, {"pki", "issue", "--dir", d, "--witness", "w"}} {
		if err := runCLI(args...); err != nil {
			t.Fatalf("%v: %v", args, err)
		}
	}
	fi, err := os.Stat(d)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("pki dir: %v %v", fi.Mode(), err)
	}
	for _, f := range []string{"ca.key", "ca.crt", "a.key", "a.crt", "w.key", "w.crt"} {
		fi, err := os.Stat(filepath.Join(d, f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f, fi.Mode(), err)
		}
	}
	// a's certificate for a member named w is refused by the cluster.
	err = runCLI("witness", "--data-dir", t.TempDir(), "--node-id", "w", "--bind", "127.0.0.1:0",
		"--tls-ca", filepath.Join(d, "ca.crt"), "--tls-cert", filepath.Join(d, "a.crt"), "--tls-key", filepath.Join(d, "a.key"))
	if err == nil || !strings.Contains(err.Error(), "names data a, this member is witness w") {
		t.Fatalf("witness w with a's certificate: %v", err)
	}
}

// TestReloadCertificate: a reload takes a reissued key pair, and keeps
// the current one when the new files do not load.
func TestReloadCertificate(t *testing.T) {
	ca := pkitest.New(t)
	src := ca.Source("w", pki.RoleWitness)
	logs := &logbuf.Buffer{}
	lg := testLogs(logs)
	r := &reloader{log: lg, creds: src}
	old := src.Certificate().SerialNumber
	ca.Issue("w", pki.RoleWitness)
	rep := r.reload()
	if src.Certificate().SerialNumber.Cmp(old) == 0 || len(rep.Applied) != 1 || !strings.HasPrefix(rep.Applied[0], "certificate") {
		t.Fatalf("reload after a reissue: %+v; serial still %x", rep, old)
	}
	if !strings.Contains(logs.String(), "TLS certificate reloaded") {
		t.Fatalf("log:\n%s", logs)
	}
	cur := src.Certificate().SerialNumber
	if err := os.WriteFile(src.Files().Cert, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	if rep := r.reload(); len(rep.Errors) != 1 || !strings.Contains(logs.String(), "TLS certificate not reloaded: keeping the current one") {
		t.Fatalf("reload of a broken certificate: %+v\n%s", rep, logs)
	}
	if src.Certificate().SerialNumber.Cmp(cur) != 0 {
		t.Fatal("a failed reload changed the certificate")
	}
}

func testLogs(w *logbuf.Buffer) logs {
	l := logs{level: new(slog.LevelVar)}
	l.Logger = slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: l.level}))
	return l
}
