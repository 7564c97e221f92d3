package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestDebianPackage builds the .deb with scripts/package, installs it
// with dpkg -i into a fresh root (a directory tree with an empty dpkg
// database and the host's systemd units, which the package's units
// need), runs the installed ldmirror --version, verifies the installed
// units with systemd-analyze verify, and removes the package again.
func TestDebianPackage(t *testing.T) {
	requireE2E(t, "dpkg", "dpkg-deb", "systemd-analyze", "git", "gzip")
	dist := t.TempDir()
	out, err := exec.Command("bash", "../scripts/package", dist).CombinedOutput()
	if err != nil {
		t.Fatalf("scripts/package: %v\n%s", err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(dist, "ldmirror_*.deb"))
	if len(debs) != 1 {
		t.Fatalf("scripts/package made %q in %s; want one ldmirror_*.deb\n%s", debs, dist, out)
	}
	deb := debs[0]

	root := t.TempDir()
	for _, d := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates", "usr/lib/systemd"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "var/lib/dpkg/status"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "cp", "-a", "/usr/lib/systemd/system", filepath.Join(root, "usr/lib/systemd/"))
	// fuse3 is the host's, not the fresh root's.
	run(t, "dpkg", "--root="+root, "--force-depends", "-i", deb)

	version := strings.TrimSpace(run(t, filepath.Join(root, "usr/bin/ldmirror"), "--version"))
	if !regexp.MustCompile(`^ldmirror \S+ \(commit \S+.*\), built with go1\.\d+`).MatchString(version) {
		t.Errorf("installed ldmirror --version printed %q", version)
	}
	// In a clone (CI's) the build carries its commit; a git worktree's
	// .git is a file the go command does not stamp from.
	if fi, err := os.Stat("../.git"); err == nil && fi.IsDir() {
		head := strings.TrimSpace(run(t, "git", "rev-parse", "HEAD"))
		if !strings.Contains(version, "commit "+head) {
			t.Errorf("installed ldmirror --version printed %q; want commit %s", version, head)
		}
	}
	for _, p := range []string{
		"usr/lib/systemd/system/ldmirror@.service", "usr/lib/systemd/system/ldmirror-witness@.service",
		"usr/share/doc/ldmirror/examples/r0.toml", "usr/share/doc/ldmirror/operations.md",
		"usr/share/man/man8/ldmirror.8.gz", "usr/share/bash-completion/completions/ldmirror",
		"usr/share/zsh/vendor-completions/_ldmirror", "usr/share/ldmirror/hooks/slapd.sh",
	} {
		if _, err := os.Stat(filepath.Join(root, p)); err != nil {
			t.Errorf("the package did not install %s: %v", p, err)
		}
	}
	if fi, err := os.Stat(filepath.Join(root, "etc/ldmirror")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("/etc/ldmirror: %v, mode %v; want 0700", err, fi)
	}
	if man := run(t, "sh", "-c", "gzip -dc "+filepath.Join(root, "usr/share/man/man8/ldmirror.8.gz")); !strings.Contains(man, ".SS check") || !strings.Contains(man, ".SH swap") {
		t.Errorf("the man page lacks the config check or swap command:\n%.400s", man)
	}

	// systemd-analyze verify: the installed units load, their ExecStart is
	// executable, their man page exists (MANPATH: the root's). A unit with
	// an unknown directive fails it, so it does check.
	verify := func(units ...string) ([]byte, error) {
		cmd := exec.Command("systemd-analyze", append([]string{"verify", "--root=" + root}, units...)...)
		cmd.Env = append(os.Environ(), "MANPATH="+filepath.Join(root, "usr/share/man"), "SYSTEMD_LOG_COLOR=0")
		return cmd.CombinedOutput()
	}
	if out, err := verify("ldmirror@r0.service", "ldmirror-witness@r0.service"); err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify of the installed units: %v\n%s", err, out)
	}
	unit := filepath.Join(root, "usr/lib/systemd/system/ldmirror@.service")
	good, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(unit, []byte(strings.Replace(string(good), "Type=notify", "Type=notfy", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := verify("ldmirror@r0.service"); err == nil && len(out) == 0 {
		t.Error("systemd-analyze verify passed a unit with Type=notfy: the check checks nothing")
	}
	if err := os.WriteFile(unit, good, 0o644); err != nil {
		t.Fatal(err)
	}

	run(t, "dpkg", "--root="+root, "-r", "ldmirror")
	if _, err := os.Stat(filepath.Join(root, "usr/bin/ldmirror")); !os.IsNotExist(err) {
		t.Errorf("dpkg -r left /usr/bin/ldmirror (stat: %v)", err)
	}
}
