// slapd on the mirrored volume, its configuration, hooks and agent, for the
// LDAP tests (ldap_test.go).

package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/internal/poll"
	"github.com/ldmirror/ldmirror/volume"
)

// hookScript is scripts/hooks/slapd.sh, the agent's promotion and demotion
// steps for slapd.
func hookScript(t *testing.T) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	p, err := filepath.Abs(filepath.Join(filepath.Dir(file), "..", "scripts", "hooks", "slapd.sh"))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// directoryHost is slapd on the mirrored volume of one data host.
type directoryHost struct {
	host, dir, mnt, conf, pid, url string
}

func newDirectoryHost(tr *trio, host string) *directoryHost {
	dir := tr.dir[host]
	return &directoryHost{host: host, dir: dir, mnt: filepath.Join(dir, "mnt"), conf: filepath.Join(dir, "slapd.conf"),
		pid: filepath.Join(dir, "slapd.pid"), url: "ldap://" + tr.port(host, "389")}
}

// writeConf writes the host's slapd.conf: its LMDB lives on the volume.
func (d *directoryHost) writeConf(t *testing.T, dataDir string) {
	t.Helper()
	var b strings.Builder
	for _, sch := range []string{"core", "cosine", "inetorgperson"} {
		fmt.Fprintf(&b, "include /etc/ldap/schema/%s.schema\n", sch)
	}
	fmt.Fprintf(&b, "pidfile %s\nargsfile %s.args\nmodulepath /usr/lib/ldap\nmoduleload back_mdb\nsizelimit unlimited\n", d.pid, d.pid)
	fmt.Fprintf(&b, "database mdb\nmaxsize 268435456\nsuffix %q\nrootdn %q\nrootpw %s\ndirectory %s\nindex objectClass,uid eq\n",
		ldapSuffix, ldapAdmin, ldapPW, dataDir)
	if err := os.WriteFile(d.conf, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}

// hookEnv is the environment the hook script needs, as a command prefix.
func (d *directoryHost) hookEnv() string {
	return fmt.Sprintf("LDM_MOUNT=%s SLAPD_CONF=%s SLAPD_URLS=%s/ SLAPD_PID=%s LDMIRROR=%s", d.mnt, d.conf, d.url, d.pid, binary)
}

// runHook runs one step of the hook script in d's host, as its agent would.
func (d *directoryHost) runHook(t *testing.T, tr *trio, step string) {
	t.Helper()
	env := d.hookEnv() + " LDMIRROR_EXPORT=" + filepath.Join(d.dir, volume.ExportDir, "volume") + " LDMIRROR_DIR=" + d.dir
	run(t, tr.in(d.host)[0], append(tr.in(d.host)[1:], "sh", "-c", env+" sh "+hookScript(t)+" "+step)...)
}

// seedDirectory makes ext4 with an LMDB directory (base entries and the
// probe's canary) on a's volume and copies it to b's, before the daemons
// start: both start identical, as two blank volumes do.
func seedDirectory(t *testing.T, tr *trio) map[string]*directoryHost {
	t.Helper()
	a, b := tr.dir["a"], tr.dir["b"]
	img := filepath.Join(a, "volume.img")
	run(t, "mkfs.ext4", "-q", "-F", img)
	seed := t.TempDir()
	run(t, "mount", "-o", "loop", img, seed)
	defer run(t, "umount", seed)
	if err := os.MkdirAll(filepath.Join(seed, "ldap"), 0o700); err != nil {
		t.Fatal(err)
	}
	hosts := map[string]*directoryHost{"a": newDirectoryHost(tr, "a"), "b": newDirectoryHost(tr, "b")}
	hosts["a"].writeConf(t, filepath.Join(seed, "ldap"))
	base := "dn: " + ldapSuffix + "\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n" +
		"dn: ou=people," + ldapSuffix + "\nobjectClass: organizationalUnit\nou: people\n\n" +
		"dn: " + ldapCanary + "\nobjectClass: organizationalRole\ncn: canary\ndescription: probe\n"
	ldif := filepath.Join(t.TempDir(), "base.ldif")
	if err := os.WriteFile(ldif, []byte(base), 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, "slapadd", "-q", "-f", hosts["a"].conf, "-l", ldif)
	for _, d := range hosts {
		d.writeConf(t, filepath.Join(d.mnt, "ldap"))
	}
	run(t, "umount", seed)
	run(t, "cp", "--sparse=always", img, filepath.Join(b, "volume.img"))
	run(t, "mount", "-o", "loop,ro", img, seed) // for the deferred umount
	return hosts
}

// agentOptions are the parts of an agent config a test varies.
type agentOptions struct {
	minSwap string
	// startFails makes the start step of this host's promotion exit 1.
	startFails bool
}

// writeAgentConfig writes host's agent config and returns its path.
func writeAgentConfig(t *testing.T, tr *trio, dirs map[string]*directoryHost, host string, opt agentOptions) string {
	t.Helper()
	peer := map[string]string{"a": "b", "b": "a"}[host]
	d := dirs[host]
	hook := func(step string) map[string]string {
		cmd := d.hookEnv() + " sh " + hookScript(t) + " " + step
		if step == "start" && opt.startFails {
			cmd = "echo 'test: slapd refuses to start' >&2; exit 1"
		}
		return map[string]string{"name": step, "command": cmd, "timeout": "20s"}
	}
	cfg := map[string]any{
		"peer_url": dirs[peer].url, "local_url": d.url,
		"bind_dn": ldapAdmin, "password": ldapPW, "canary_dn": ldapCanary,
		"interval": "1s", "timeout": "500ms", "threshold": 3, "min_swap_interval": opt.minSwap,
		"failback": "manual",
		"promote":  []any{hook("attach"), hook("mount"), hook("start")},
		"demote":   []any{hook("stop"), hook("umount"), hook("detach")},
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(tr.dir[host], "agent.json")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// startDirectoryPair seeds the volumes, starts both daemons with agents
// and makes a primary; it returns once slapd on a answers the client.
func startDirectoryPair(t *testing.T, opts map[string]agentOptions) (*trio, map[string]*directoryHost, *ldapClient) {
	t.Helper()
	requireE2E(t, "nsenter", "mkfs.ext4", "slapadd", "ldapsearch")
	if _, err := os.Stat("/usr/sbin/slapd"); err != nil {
		t.Skip("needs slapd (the README test command installs it)")
	}
	tr := newTrio(t, "128MiB")
	dirs := seedDirectory(t, tr)
	for _, host := range []string{"b", "a"} {
		tr.start(host, "--agent-config", writeAgentConfig(t, tr, dirs, host, opts[host]))
	}
	t.Cleanup(func() {
		// Leave no slapd, mount or loop device behind.
		for _, d := range dirs {
			if pid, err := os.ReadFile(d.pid); err == nil {
				exec.Command("kill", "-9", strings.TrimSpace(string(pid))).Run()
			}
			exec.Command("umount", "-l", d.mnt).Run()
			for _, dev := range exportLoops(d.dir) {
				exec.Command("losetup", "-d", dev).Run()
			}
		}
	})
	tr.promoteFirst()
	c := &ldapClient{tr: tr, dirs: dirs}
	poll.Until(t, 60*time.Second, "slapd on a to answer", func() bool { return c.ping("a") == nil })
	poll.Until(t, 30*time.Second, "b's agent to see slapd on a answer", func() bool {
		st, err := status(tr.dir["b"])
		return err == nil && st.Agent != nil && st.Agent.Service.Known && st.Agent.Service.Up
	})
	return tr, dirs, c
}

// slapcat dumps d's database with slapcat, which LMDB allows while slapd
// runs, and asserts that it holds at least acked person entries.
func (d *directoryHost) slapcat(t *testing.T, acked int) {
	t.Helper()
	out, err := exec.Command("slapcat", "-f", d.conf).CombinedOutput()
	if err != nil {
		t.Fatalf("slapcat on %s: %v %s", d.host, err, out)
	}
	if n := strings.Count(string(out), "\ndn: uid="); n < acked {
		t.Fatalf("slapcat on %s dumped %d person entries, fewer than the %d adds acknowledged", d.host, n, acked)
	}
}

// waitAgentReady waits until host's agent reports host ready to the
// control plane: a swap toward a host that is not is refused.
func waitAgentReady(t *testing.T, tr *trio, host string) {
	t.Helper()
	poll.Until(t, 30*time.Second, host+"'s agent to report "+host+" ready", func() bool {
		st, err := status(tr.dir[host])
		return err == nil && st.Agent != nil && st.Agent.Ready && st.Agent.ReadyReported
	})
}
