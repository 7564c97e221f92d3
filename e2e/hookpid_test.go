package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSlapdHookPidfile: scripts/hooks/slapd.sh signals only a live slapd.
// A pidfile holding -1 (kill: every process), 0 (the caller's process
// group), 1 (init) or junk makes stop and start fail without signalling;
// one naming another program is stale and left alone. Each case runs in a
// PID namespace of its own, so that a broken check could not kill this
// machine's processes.
func TestSlapdHookPidfile(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a PID namespace")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("needs unshare (util-linux)")
	}
	dir := t.TempDir()
	pidfile := filepath.Join(dir, "slapd.pid")
	for _, tc := range []struct {
		name, content, step string
		fails               bool
		want                string
	}{
		{"minus one", "-1\n", "stop", true, `holds "-1", not a process id`},
		{"zero", "0", "stop", true, `holds "0", not a process id`},
		{"init", "1\n", "stop", true, "which is init"},
		{"junk", "12 34x\n", "stop", true, "not a process id"},
		{"junk at start", "abc", "start", true, "not a process id"},
		{"another program", "$SLEEPER", "stop", false, "is sleep, not slapd: a stale pidfile; not signalled"},
		{"gone", "4194304", "stop", false, "slapd not running"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// In the namespace: a sleep stands for an unrelated process;
			// after the step it must still be alive.
			script := `sleep 30 & SLEEPER=$!
printf '%s' "` + tc.content + `" >"$SLAPD_PID"
sh "$HOOK" ` + tc.step + `; rc=$?
kill -0 $SLEEPER || { echo "the unrelated process was killed"; exit 99; }
exit $rc`
			cmd := exec.Command("unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", script)
			cmd.Env = append(os.Environ(), "HOOK="+hookScript(t), "SLAPD_PID="+pidfile,
				"LDMIRROR_EXPORT="+filepath.Join(dir, "volume"), "LDM_MOUNT="+filepath.Join(dir, "mnt"),
				"SLAPD_CONF=/nonexistent", "SLAPD_URLS=ldap://127.0.0.1:1/")
			out, err := cmd.CombinedOutput()
			if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 99 {
				t.Fatalf("%s with pidfile %q killed an unrelated process:\n%s", tc.step, tc.content, out)
			}
			if (err != nil) != tc.fails || !strings.Contains(string(out), tc.want) {
				t.Fatalf("%s with pidfile %q: %v, want failure %t and %q:\n%s", tc.step, tc.content, err, tc.fails, tc.want, out)
			}
		})
	}
}
