package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/internal/netns"
	"github.com/ldmirror/ldmirror/internal/poll"
	"github.com/ldmirror/ldmirror/mirror"
	"github.com/ldmirror/ldmirror/node"
	"github.com/ldmirror/ldmirror/volume"
)

// fioRun is an fio job running in the background.
type fioRun struct {
	cmd  *exec.Cmd
	out  strings.Builder
	done chan error
}

// startFio writes 4 KiB blocks at random through dev with direct I/O for
// seconds, verifying them as it goes.
func startFio(t *testing.T, dev string, seconds int) *fioRun {
	t.Helper()
	f := &fioRun{done: make(chan error, 1)}
	f.cmd = exec.Command("fio", "--name=hup", "--filename="+dev, "--size=32M", "--rw=randwrite", "--bs=4k",
		"--ioengine=libaio", "--iodepth=8", "--direct=1", "--time_based", fmt.Sprintf("--runtime=%ds", seconds),
		"--verify=crc32c", "--verify_fatal=1", "--verify_state_save=0", "--output-format=json")
	f.cmd.Stdout, f.cmd.Stderr = &f.out, &f.out
	if err := f.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { f.done <- f.cmd.Wait() }()
	t.Cleanup(func() { _ = f.cmd.Process.Kill(); <-f.done })
	return f
}

// running reports whether fio has not exited yet.
func (f *fioRun) running() bool { return f.cmd.ProcessState == nil && len(f.done) == 0 }

// wait waits for fio to end and checks that no I/O failed.
func (f *fioRun) wait(t *testing.T) {
	t.Helper()
	err := <-f.done
	f.done <- err // for the cleanup
	var res struct {
		Jobs []struct {
			Error int `json:"error"`
			Write struct {
				IOBytes int64 `json:"io_bytes"`
			} `json:"write"`
		} `json:"jobs"`
	}
	out := f.out.String()
	if i := strings.Index(out, "{"); i >= 0 {
		out = out[i:]
	}
	if jerr := json.Unmarshal([]byte(out), &res); err != nil || jerr != nil || len(res.Jobs) != 1 || res.Jobs[0].Error != 0 || res.Jobs[0].Write.IOBytes == 0 {
		t.Fatalf("fio: exit %v, decode %v, result %+v:\n%s", err, jerr, res, f.out.String())
	}
	t.Logf("fio wrote %d MiB with no error", res.Jobs[0].Write.IOBytes>>20)
}

// editResource rewrites r0.toml on host with edit.
func (rl *resourceLab) editResource(host string, edit func(string) string) {
	rl.t.Helper()
	p := filepath.Join(rl.conf(host), resourceName+".toml")
	b, err := os.ReadFile(p)
	if err != nil {
		rl.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(edit(string(b))), 0o600); err != nil {
		rl.t.Fatal(err)
	}
}

// TestSignals: SIGHUP reloads a primary under fio load, which sees no
// error, and the new resync rate paces the next resync; SIGTERM stops
// both data hosts with nothing left behind: no mount, no loop device, no
// control socket, no ERROR line.
func TestSignals(t *testing.T) {
	requireE2E(t, "nsenter", "losetup", "fio")
	if err := netns.Available(); err != nil {
		t.Skip(err)
	}
	rl := newResourceLab(t, "128MiB", "")
	rl.start()
	a := rl.proc["a"]
	dev := strings.TrimSpace(rl.cli("a", "attach", resourceName))

	fio := startFio(t, dev, 10)
	shipped := rl.statusOf("a").WritesShipped
	poll.Until(t, 10*time.Second, "fio's writes to reach b", func() bool {
		st, err := status(rl.dir("a"))
		return err == nil && st.WritesShipped > shipped+1000
	})
	const rate = 8 << 20
	rl.editResource("a", func(s string) string {
		s = strings.Replace(s, `rate = "0"`, "rate = \"8MiB\"\nmin_rate = \"4MiB\"", 1)
		return strings.Replace(s, "[volume]", "log_level = \"debug\"\n\n[volume]", 1)
	})
	if err := a.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	var reloaded string
	poll.Until(t, 10*time.Second, "a to log its reload", func() bool {
		b, _ := os.ReadFile(a.log.Name())
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, "msg=reloaded") {
				reloaded = line
				return true
			}
		}
		return false
	})
	for _, want := range []string{`resync-rate \"\" -> 8MiB`, "resync-min-rate 16MiB -> 4MiB", "log-level info -> debug", "certificate (serial"} {
		if !strings.Contains(reloaded, want) {
			t.Errorf("the reload's log line lacks %q: %s", want, reloaded)
		}
	}
	if !fio.running() {
		t.Fatal("fio ended before the reload was logged: the reload did not happen under load")
	}
	st := rl.statusOf("a")
	if st.Role != cluster.RolePrimary || st.Export == "" || st.Link != node.LinkConnected {
		t.Fatalf("a after SIGHUP: role %s, export %q, link %s; want a connected primary serving", st.Role, st.Export, st.Link)
	}
	fio.wait(t)
	if st := rl.statusOf("a"); st.Role != cluster.RolePrimary || st.Replication != mirror.StateReplicating {
		t.Fatalf("a after fio: role %s, replication %s", st.Role, st.Replication)
	}

	// The new rate paces the next resync: b misses 24 MiB of writes and
	// comes back; at 8 MiB/s the copy takes at least about 3 s (one
	// block may go unpaced), where unpaced it takes a fraction of one.
	rl.proc["b"].kill()
	<-rl.proc["b"].done
	poll.Until(t, 10*time.Second, "a to log writes for b", func() bool {
		st, err := status(rl.dir("a"))
		return err == nil && st.Replication == mirror.StateLogging
	})
	if err := writeSync(filepath.Join(rl.dir("a"), volume.ExportDir, "volume"), make([]byte, 24<<20)); err != nil {
		t.Fatal(err)
	}
	dirty := rl.statusOf("a").DirtyBytes
	if dirty < 24<<20 {
		t.Fatalf("a has %d dirty bytes after writing 24 MiB", dirty)
	}
	start := time.Now()
	rl.up("b")
	rl.waitServing("a", "b")
	took := time.Since(start)
	least := time.Duration(float64(dirty-4<<10) / rate * 0.95 * float64(time.Second))
	if took < least {
		t.Fatalf("resync of %d bytes took %v; at the reloaded 8 MiB/s it takes at least %v", dirty, took, least)
	}
	t.Logf("resync of %d MiB at 8 MiB/s took %v", dirty>>20, took.Round(time.Millisecond))

	// SIGTERM: a detaches its loop device, releases its export and
	// socket; b too; neither logs an error.
	for _, h := range []string{"a", "b"} {
		d := rl.proc[h]
		from := d.logSize(t)
		if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case <-d.done:
		case <-time.After(30 * time.Second):
			t.Fatalf("%s did not exit within 30 s of SIGTERM", h)
		}
		if d.err != nil {
			t.Errorf("%s exited with %v after SIGTERM", h, d.err)
		}
		checkNothingLeft(t, rl.dir(h), d, from)
	}
	if _, err := os.Stat(dev); err == nil {
		if out, _ := exec.Command("losetup", "-n", "-O", "BACK-FILE", dev).Output(); strings.Contains(string(out), rl.dir("a")) {
			t.Errorf("%s still backs a's export: %s", dev, out)
		}
	}
}
