package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// run runs the CLI with args and returns its error.
func runCLI(args ...string) error {
	app := &cli.App{Name: "ldmirror", Commands: []*cli.Command{daemonCommand(), witnessCommand(), pkiCommand()}}
	return app.Run(append([]string{"ldmirror"}, args...))
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
