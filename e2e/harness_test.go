package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/internal/peertest"
	"github.com/ldmirror/ldmirror/internal/poll"
	"github.com/ldmirror/ldmirror/volume"

	"github.com/ldmirror/ldmirror/ctl"
	"github.com/ldmirror/ldmirror/node"
)

// binary is the ldmirror built once for the package's tests, with the
// crash points of package failpoint.
var binary string

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run()) // every test skips: no binary to build
	}
	code := func() int {
		dir, err := os.MkdirTemp("", "ldmirror-e2e-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		binary = filepath.Join(dir, "ldmirror")
		// With the crash points compiled in: they stay off unless a test
		// arms one (armed), so the other tests run the shipped code paths.
		out, err := exec.Command("go", "build", "-tags", "failpoints", "-o", binary, "github.com/ldmirror/ldmirror/cmd/ldmirror").CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build ldmirror: %v\n%s", err, out)
			return 1
		}
		return m.Run()
	}()
	os.Exit(code)
}

// requireE2E skips unless the test can run for real here.
func requireE2E(t *testing.T, tools ...string) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test; skipped with -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for FUSE mounts, loop devices and mount(8)")
	}
	for _, p := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("needs %s: %v", p, err)
		}
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (the README test command installs it)", tool)
		}
	}
}

// ldmirror runs a CLI command and returns its stdout.
func ldmirror(t *testing.T, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("ldmirror %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String()
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// daemon is one running `ldmirror daemon` process.
type daemon struct {
	dir  string
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{} // closed when the process exited; err is then set
	err  error
}

func startDaemon(t *testing.T, dir string, args ...string) *daemon {
	t.Helper()
	return startDaemonIn(t, nil, dir, args...)
}

// startDaemonIn is startDaemon with the command run under prefix, e.g.
// nsenter into a test host's network namespace.
func startDaemonIn(t *testing.T, prefix []string, dir string, args ...string) *daemon {
	t.Helper()
	argv := append(append(slices.Clone(prefix), binary, "daemon", "--dir", dir), args...)
	d := spawn(t, dir, exec.Command(argv[0], argv[1:]...))
	poll.Until(t, 10*time.Second, "the daemon in "+dir+" to answer on its control socket", func() bool {
		_, err := status(dir)
		return err == nil
	})
	return d
}

// spawn starts cmd, an ldmirror process (a daemon, or the witness) of
// the volume in dir, logging to dir/daemon.log; the test's cleanup kills
// it and releases what a killed primary leaves behind.
func spawn(t *testing.T, dir string, cmd *exec.Cmd) *daemon {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "daemon.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemon{dir: dir, cmd: cmd, log: logf, done: make(chan struct{})}
	go func() { d.err = cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		loops := exportLoops(dir) // found by path only while the export is served
		d.kill()
		<-d.done
		// A killed primary leaves a dead FUSE mount behind.
		_ = syscall.Unmount(filepath.Join(dir, volume.ExportDir), syscall.MNT_DETACH)
		for _, dev := range loops { // a mounted one detaches at its umount
			_ = exec.Command("losetup", "-d", dev).Run()
		}
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("log of the daemon in %s:\n%s", dir, b)
		}
		logf.Close()
	})
	return d
}

// stop sends SIGTERM and waits for a clean exit.
func (d *daemon) stop(t *testing.T) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.done:
		if d.err != nil {
			t.Fatalf("daemon in %s exited with %v", d.dir, d.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("daemon in %s did not exit within 30 s of SIGTERM", d.dir)
	}
}

// exportLoops lists the loop devices over dir's export file. It finds them
// only while a daemon serves the export: once the FUSE mount is gone their
// backing file has lost its path.
func exportLoops(dir string) []string {
	out, _ := exec.Command("losetup", "-n", "-O", "NAME", "-j", filepath.Join(dir, volume.ExportDir, "volume")).Output()
	return strings.Fields(string(out))
}

func (d *daemon) kill() {
	_ = d.cmd.Process.Kill()
}

func status(dir string) (node.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return ctl.NewClient(filepath.Join(dir, volume.ControlFile)).Status(ctx)
}

// statusJSON runs `ldmirror status --json`, as an operator would.
func statusJSON(t *testing.T, dir string) node.Status {
	t.Helper()
	var st node.Status
	if err := json.Unmarshal([]byte(ldmirror(t, "status", "--json", "--dir", dir)), &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

var uuidRE = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`)

// issueCerts makes a CA in dir/pki with `ldmirror pki` and issues
// certificates for data hosts a and b and witness w; it returns the pki
// directory, which each node's --tls-dir names.
func issueCerts(t *testing.T, dir string) string {
	t.Helper()
	d := filepath.Join(dir, "pki")
	ldmirror(t, "pki", "init", "--dir", d)
	ldmirror(t, "pki", "issue", "--dir", d, "a")
	ldmirror(t, "pki", "issue", "--dir", d, "b")
	ldmirror(t, "pki", "issue", "--dir", d, "--witness", "w")
	return d
}

// pairDirs creates two volume directories of one volume and the
// certificates of a, b and w (see issueCerts).
func pairDirs(t *testing.T, size string) (a, b, creds string) {
	t.Helper()
	root := t.TempDir()
	a, b = filepath.Join(root, "a"), filepath.Join(root, "b")
	id := uuidRE.FindString(ldmirror(t, "init", "--dir", a, "--size", size))
	if id == "" {
		t.Fatal("init printed no volume uuid")
	}
	ldmirror(t, "init", "--dir", b, "--size", size, "--volume-uuid", id)
	return a, b, issueCerts(t, root)
}

// mirroredPair starts a secondary in b and a primary in a, connected.
func mirroredPair(t *testing.T, a, b, creds string, extra ...string) (pri, sec *daemon) {
	t.Helper()
	addr := peertest.FreeAddr(t)
	sec = startDaemon(t, b, "--role", "secondary", "--node-id", "b", "--listen", addr, "--tls-dir", creds)
	pri = startDaemon(t, a, append([]string{"--role", "primary", "--node-id", "a", "--peer", addr, "--tls-dir", creds}, extra...)...)
	poll.Until(t, 10*time.Second, "the primary to connect", func() bool {
		st, err := status(a)
		return err == nil && st.Link == node.LinkConnected
	})
	return pri, sec
}

// mountVolume attaches the primary's export, makes ext4 on it and mounts it.
func mountVolume(t *testing.T, a string) (dev, mnt string) {
	t.Helper()
	dev = strings.TrimSpace(ldmirror(t, "attach", "--dir", a))
	t.Cleanup(func() {
		// By number only while it is still this export's: once detached,
		// the number may be another run's loop device.
		if slices.Contains(exportLoops(a), dev) {
			exec.Command(binary, "detach", dev).Run()
		}
	})
	run(t, "mkfs.ext4", "-q", "-F", dev)
	mnt = t.TempDir()
	run(t, "mount", dev, mnt)
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	return dev, mnt
}
