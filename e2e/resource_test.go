package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/internal/netns"
	"github.com/ldmirror/ldmirror/internal/poll"
	"github.com/ldmirror/ldmirror/node"
	"github.com/ldmirror/ldmirror/volume"
)

// resourceLab is a pair and its witness run as an operator would: one
// resource file, r0, copied to the configuration directory of each of
// three network-namespace hosts, a, b and w, and every command given the
// resource's name.
type resourceLab struct {
	t    *testing.T
	lab  *netns.Lab
	root string
	proc map[string]*daemon // the `ldmirror up r0` of each host
}

// resourceName is the lab's resource.
const resourceName = "r0"

// newResourceLab writes r0.toml (with extra appended to its top-level
// keys) to each host's configuration directory and creates both volumes
// with `ldmirror init r0`.
func newResourceLab(t *testing.T, size, extra string) *resourceLab {
	t.Helper()
	rl := &resourceLab{t: t, lab: netns.NewLab(t, "a", "b", "w"), root: t.TempDir(), proc: map[string]*daemon{}}
	creds := issueCerts(t, rl.root)
	file := fmt.Sprintf(`# r0: the e2e test's resource (docs/operations.md, "Resource files")
mode = "sync"
timeout = %q
raft_timeout = "300ms"
%s
[volume]
uuid = "6a3c0a57-3f8e-4d55-9a2b-2f7c1b0e9d41"
size = %q

[tls]
dir = %q

[resync]
rate = "0"

[[host]]
id = "a"
dir = %q
link = "%s:7789"
cluster = "%s:7400"

[[host]]
id = "b"
dir = %q
link = "%s:7789"
cluster = "%s:7400"

[witness]
id = "w"
cluster = "%s:7400"
dir = %q
`, daemonTimeout, extra, size, creds, rl.dir("a"), rl.lab.Addr("a"), rl.lab.Addr("a"),
		rl.dir("b"), rl.lab.Addr("b"), rl.lab.Addr("b"), rl.lab.Addr("w"), rl.dir("w"))
	for _, h := range []string{"a", "b", "w"} {
		if err := os.MkdirAll(rl.conf(h), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(rl.conf(h), resourceName+".toml"), []byte(file), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, h := range []string{"a", "b"} {
		rl.cli(h, "init", resourceName)
	}
	return rl
}

// dir is host's volume directory (the witness's data directory for w).
func (rl *resourceLab) dir(host string) string { return filepath.Join(rl.root, host) }

// conf is host's configuration directory, its /etc/ldmirror.
func (rl *resourceLab) conf(host string) string { return filepath.Join(rl.root, "etc-"+host) }

// command is `ldmirror VERB ARGS...` as host runs it: in its namespace,
// with its configuration directory and its node ID (its hostname would
// be the machine's).
func (rl *resourceLab) command(host string, args ...string) *exec.Cmd {
	argv := append([]string{"--net=/run/netns/" + rl.lab.NS(host), binary, "--config-dir", rl.conf(host)}, args...)
	cmd := exec.Command("nsenter", argv...)
	cmd.Env = append(os.Environ(), "LDMIRROR_NODE_ID="+host)
	return cmd
}

// cli runs a command on host and returns its stdout; it fails the test
// if the command fails.
func (rl *resourceLab) cli(host string, args ...string) string {
	rl.t.Helper()
	out, err := rl.try(host, args...)
	if err != nil {
		rl.t.Fatalf("%s: ldmirror %s: %v", host, strings.Join(args, " "), err)
	}
	return out
}

// try runs a command on host: its stdout, or an error with its stderr.
func (rl *resourceLab) try(host string, args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := rl.command(host, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%w: %s", err, stderr.String())
	}
	return stdout.String(), nil
}

// up starts `ldmirror up r0` on host and waits until it answers on its
// control socket.
func (rl *resourceLab) up(host string, more ...string) *daemon {
	rl.t.Helper()
	d := spawn(rl.t, rl.dir(host), rl.command(host, append([]string{"up", resourceName}, more...)...))
	rl.proc[host] = d
	poll.Until(rl.t, 10*time.Second, host+"'s ldmirror up to answer on its control socket", func() bool {
		_, err := rl.try(host, "status", resourceName)
		return err == nil
	})
	return d
}

// start brings the witness and both data hosts up, makes a the first
// primary and waits until it serves and b is uptodate.
func (rl *resourceLab) start() {
	rl.t.Helper()
	rl.up("w")
	rl.up("b")
	rl.up("a")
	poll.Until(rl.t, 20*time.Second, "the members to join and a to be promoted", func() bool {
		_, err := rl.try("a", "promote", resourceName, "a", "--force", "--reason", "initial sync source")
		return err == nil
	})
	rl.waitServing("a", "b")
}

// waitServing waits until primary serves its export, replicates to
// secondary, and the control plane records secondary uptodate.
func (rl *resourceLab) waitServing(primary, secondary string) {
	rl.t.Helper()
	poll.Until(rl.t, 30*time.Second, primary+" to serve and "+secondary+" to be uptodate", func() bool {
		st, err := status(rl.dir(primary))
		v, cerr := clusterState(rl.t, rl.dir(primary))
		return err == nil && cerr == nil && st.Role == cluster.RolePrimary && st.Export != "" &&
			st.Link == node.LinkConnected && v.disk(secondary) == "uptodate"
	})
}

// statusOf is `ldmirror status r0 --json` on host.
func (rl *resourceLab) statusOf(host string) node.Status {
	rl.t.Helper()
	var st node.Status
	if err := json.Unmarshal([]byte(rl.cli(host, "status", resourceName, "--json")), &st); err != nil {
		rl.t.Fatal(err)
	}
	return st
}

// down runs `ldmirror down r0` on host (a data host or the witness) and
// checks that the process exited cleanly and left nothing behind.
func (rl *resourceLab) down(host string) {
	rl.t.Helper()
	from := rl.proc[host].logSize(rl.t)
	out := rl.cli(host, "down", resourceName)
	if want := fmt.Sprintf("%s: %s stopped", resourceName, host); !strings.Contains(out, want) {
		rl.t.Errorf("down printed %q, want %q", out, want)
	}
	d := rl.proc[host]
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		rl.t.Fatalf("%s: down returned but the process still runs", host)
	}
	if d.err != nil {
		rl.t.Errorf("%s: ldmirror up exited with %v after down", host, d.err)
	}
	checkNothingLeft(rl.t, rl.dir(host), d, from)
}

// logSize is the length of d's log so far.
func (d *daemon) logSize(t *testing.T) int64 {
	t.Helper()
	fi, err := d.log.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// checkNothingLeft checks that the stopped daemon of the volume in dir
// left no FUSE mount, loop device or control socket, and logged no ERROR
// after offset from of its log (where its stop began).
func checkNothingLeft(t *testing.T, dir string, d *daemon, from int64) {
	t.Helper()
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if exp := filepath.Join(dir, volume.ExportDir); bytes.Contains(mounts, []byte(" "+exp+" ")) {
		t.Errorf("%s is still mounted", exp)
	}
	out, _ := exec.Command("losetup", "-n", "-O", "NAME,BACK-FILE").Output()
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, dir+"/") {
			t.Errorf("a loop device is left over: %s", line)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, volume.ControlFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the control socket is left over (stat: %v)", err)
	}
	logged, err := os.ReadFile(d.log.Name())
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(logged[from:]), "\n") {
		if strings.Contains(line, "level=ERROR") {
			t.Errorf("a clean stop logged an error: %s", line)
		}
	}
}

// TestResourceUpStatusSwapDown drives a pair and its witness from one
// resource file: config check, up, status, swap and down, each checked
// for its effect.
func TestResourceUpStatusSwapDown(t *testing.T) {
	requireE2E(t, "nsenter", "losetup")
	if err := netns.Available(); err != nil {
		t.Skip(err)
	}
	rl := newResourceLab(t, "64MiB", "")

	// config check: the effective settings, with where each came from.
	check := rl.cli("a", "config", "check", resourceName)
	for _, want := range []string{"runs ldmirror daemon r0 with:",
		"--listen " + rl.lab.Addr("a") + ":7789 [[host]] a link",
		"--peer " + rl.lab.Addr("b") + ":7789 [[host]] b link",
		"--cluster-join " + rl.lab.Addr("w") + ":7400 witness.cluster"} {
		if !hasLine(check, want) {
			t.Errorf("config check on a lacks %q:\n%s", want, check)
		}
	}
	if w := rl.cli("w", "config", "check", resourceName); !strings.Contains(w, "runs ldmirror witness r0") {
		t.Errorf("config check on w does not run the witness:\n%s", w)
	}

	rl.start()

	// status: a primary serving, b its uptodate secondary, both named
	// by the file's node IDs; with no name, every resource on the host.
	text := rl.cli("a", "status", resourceName)
	for _, want := range []string{"node         a (primary)", "(node b)", "replicating (sync)"} {
		if !strings.Contains(text, want) {
			t.Errorf("status r0 on a lacks %q:\n%s", want, text)
		}
	}
	if st := rl.statusOf("b"); st.Role != cluster.RoleSecondary || st.PeerNode != "a" {
		t.Errorf("b: role %s, peer %q; want secondary of a", st.Role, st.PeerNode)
	}
	if all := rl.cli("a", "status"); !strings.Contains(all, resourceName) || !strings.Contains(all, "a (primary)") {
		t.Errorf("status with no resource does not show r0:\n%s", all)
	}

	// Data written on a, then swap: b serves the same bytes as primary.
	data := bytes.Repeat([]byte("resource file e2e "), 1<<16)
	exp := filepath.Join(rl.dir("a"), volume.ExportDir, "volume")
	if err := writeSync(exp, data); err != nil {
		t.Fatal(err)
	}
	out := rl.cli("a", "swap", resourceName)
	if !strings.Contains(out, "swapped") {
		t.Errorf("swap printed %q", out)
	}
	rl.waitServing("b", "a")
	if st := rl.statusOf("a"); st.Role != cluster.RoleSecondary {
		t.Errorf("a after swap: role %s, want secondary", st.Role)
	}
	got := make([]byte, len(data))
	f, err := os.Open(filepath.Join(rl.dir("b"), volume.ExportDir, "volume"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.ReadAt(got, 0)
	f.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("b's export after swap does not hold what a wrote (err %v)", err)
	}

	// down: each process exits cleanly and leaves nothing behind.
	for _, h := range []string{"b", "a"} {
		rl.down(h)
	}
	if _, err := rl.try("a", "status", resourceName); err == nil {
		t.Error("status r0 answers after down")
	}
	rl.down("w")
}

// writeSync writes data at the start of path and syncs it.
func writeSync(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(data, 0); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// hasLine reports whether out has a line whose words are want's.
func hasLine(out, want string) bool {
	for _, line := range strings.Split(out, "\n") {
		if strings.Join(strings.Fields(line), " ") == want || strings.Contains(strings.Join(strings.Fields(line), " "), want) {
			return true
		}
	}
	return false
}
