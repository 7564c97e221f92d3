package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/ctl"
	"github.com/ldmirror/ldmirror/node"
	"github.com/ldmirror/ldmirror/scripts/bench/internal/benchenv"
	"github.com/ldmirror/ldmirror/volume"
)

// setup brings a configuration up and returns the device to measure and
// how to tear it all down.
type setup func(b *bench) (dev string, teardown func(), err error)

var configNames = []string{"passthrough", "sync", "sync-plaintext", "sync-noal", "async", "qemu-quorum", "raw"}

var setups = map[string]setup{
	"passthrough": (*bench).passthrough,
	"sync":        func(b *bench) (string, func(), error) { return b.mirrored(nil, nil) },
	// The data link without TLS: what TLS costs (issue 15).
	"sync-plaintext": func(b *bench) (string, func(), error) { return b.mirrored(plaintextFlags, nil) },
	"sync-noal":      func(b *bench) (string, func(), error) { return b.mirrored(nil, []string{"--activity-log=false"}) },
	// Both hosts of a pair run the same --mode: the secondary keeps its
	// applied journal position only in async mode.
	"async":       func(b *bench) (string, func(), error) { return b.mirrored(b.asyncFlags(), nil) },
	"qemu-quorum": (*bench).qemuQuorum,
	"raw":         (*bench).raw,
}

// daemon starts `ldmirror daemon` and waits for its control socket.
func (b *bench) daemon(dir string, args ...string) (*benchenv.Proc, error) {
	logPath := filepath.Join(dir, "daemon.log")
	p, err := benchenv.Start(logPath, b.bin, append([]string{"daemon", "--dir", dir, "--log-level", "warn"}, args...)...)
	if err != nil {
		return nil, err
	}
	err = waitUntil(10*time.Second, func() bool {
		if !p.Running() {
			return true
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		st, err := ctl.NewClient(filepath.Join(dir, volume.ControlFile)).Status(ctx)
		return err == nil && (st.Link == node.LinkConnected || st.Link == node.LinkStandalone || st.Role == cluster.RoleSecondary)
	})
	if !p.Running() {
		log, _ := os.ReadFile(logPath)
		return nil, fmt.Errorf("daemon in %s exited: %s", dir, strings.TrimSpace(string(log)))
	}
	if err != nil {
		p.Cmd.Process.Kill()
		<-p.Exited()
		return nil, fmt.Errorf("daemon in %s: %w (see %s)", dir, err, logPath)
	}
	return p, nil
}

// status fetches the daemon's status from its control socket.
func (b *bench) status(path string) (node.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return ctl.NewClient(path).Status(ctx)
}

// journalNote describes an async primary's journal right after a workload:
// whether it filled (then writers were throttled to the shipping rate) or
// overflowed.
func (b *bench) journalNote() string {
	if b.primaryCtl == "" {
		return ""
	}
	st, err := b.status(b.primaryCtl)
	if err != nil || st.Mode != "async" {
		return ""
	}
	n := fmt.Sprintf("journal %.0f/%.0f MiB, lag %d records", float64(st.JournalUsed)/(1<<20),
		float64(st.JournalCapacity)/(1<<20), st.JournalLag)
	if st.JournalOverflow {
		n += ", overflowed: " + st.FallbackReason
	}
	return n
}

// drainJournal waits, after a workload on an async primary, until the
// peer acknowledged every record, so that the next workload starts with
// the journal empty (the RTT sweep measures async while its journal has
// room). It gives up after limit.
func (b *bench) drainJournal(limit time.Duration) {
	if b.primaryCtl == "" {
		return
	}
	_ = waitUntil(limit, func() bool {
		st, err := b.status(b.primaryCtl)
		return err != nil || st.Mode != "async" || st.JournalLag == 0
	})
}

var uuidRE = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`)

func (b *bench) initVolume(dir, id string) (string, error) {
	args := []string{"init", "--dir", dir, "--size", fmt.Sprintf("%dMiB", b.sizeMiB)}
	if id != "" {
		args = append(args, "--volume-uuid", id)
	}
	out, err := exec.Command(b.bin, args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("init: %v: %s", err, out)
	}
	return uuidRE.FindString(string(out)), nil
}

func (b *bench) attach(dir string) (string, error) {
	out, err := exec.Command(b.bin, "attach", "--dir", dir).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("attach: %v: %s", err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

func (b *bench) detach(dev string) {
	_ = exec.Command(b.bin, "detach", dev).Run()
}

// passthrough is configuration (a): the FUSE export of the local file with
// no mirroring and no dirty tracking.
func (b *bench) passthrough() (string, func(), error) {
	dir, err := os.MkdirTemp(b.work, "passthrough")
	if err != nil {
		return "", nil, err
	}
	if _, err := b.initVolume(dir, ""); err != nil {
		return "", nil, err
	}
	d, err := b.daemon(dir, "--role", "primary", "--node-id", "a", "--passthrough")
	if err != nil {
		return "", nil, err
	}
	dev, err := b.attach(dir)
	if err != nil {
		d.Stop()
		return "", nil, err
	}
	b.daemons = []int{d.Cmd.Process.Pid}
	return dev, func() { b.daemons = nil; b.detach(dev); d.Stop(); os.RemoveAll(dir) }, nil
}

// daemonCPU returns the CPU time (user and system) the daemons being
// measured used so far, primary first.
func (b *bench) daemonCPU() [2]time.Duration {
	var cpu [2]time.Duration
	for i, pid := range b.daemons {
		cpu[i] = benchenv.ProcessCPU(pid)
	}
	return cpu
}

// perOp is the CPU time from a to b per op, in µs.
func perOp(a, b [2]time.Duration, ops float64) [2]float64 {
	var us [2]float64
	if ops <= 0 {
		return us
	}
	for i := range a {
		us[i] = float64(b[i]-a[i]) / float64(time.Microsecond) / ops
	}
	return us
}

// mirrored is configurations (b) and (c): mirroring to a secondary on
// 127.0.0.1. both are extra flags for both daemons (the pair's mode),
// primary extra flags for the primary alone.
func (b *bench) mirrored(both, primary []string) (string, func(), error) {
	root, err := os.MkdirTemp(b.work, "mirror")
	if err != nil {
		return "", nil, err
	}
	a, s := filepath.Join(root, "a"), filepath.Join(root, "b")
	id, err := b.initVolume(a, "")
	if err != nil {
		return "", nil, err
	}
	if _, err := b.initVolume(s, id); err != nil {
		return "", nil, err
	}
	creds, err := b.credentials(root, slices.Equal(both, plaintextFlags))
	if err != nil {
		return "", nil, err
	}
	if b.window > 0 {
		creds = append(creds, "--window", strconv.Itoa(b.window))
	}
	addr, err := freeAddr()
	if err != nil {
		return "", nil, err
	}
	sec, err := b.daemon(s, append(append([]string{"--role", "secondary", "--node-id", "b", "--listen", addr}, creds...), both...)...)
	if err != nil {
		return "", nil, err
	}
	link, closeLink, err := b.link(addr)
	if err != nil {
		sec.Stop()
		return "", nil, err
	}
	pri, err := b.daemon(a, append(append(append([]string{"--role", "primary", "--node-id", "a", "--peer", link}, creds...), both...), primary...)...)
	if err != nil {
		closeLink()
		sec.Stop()
		return "", nil, err
	}
	stop := func() { pri.Stop(); closeLink(); sec.Stop() }
	// A daemon that ignored --mode would measure sync under async's name.
	want := "sync"
	if slices.Contains(both, "--mode") {
		want = "async"
	}
	ctl := filepath.Join(a, volume.ControlFile)
	if st, err := b.status(ctl); err != nil || st.Mode != want {
		stop()
		return "", nil, fmt.Errorf("primary runs in mode %q, want %q (%v)", st.Mode, want, err)
	}
	dev, err := b.attach(a)
	if err != nil {
		stop()
		return "", nil, err
	}
	b.primaryCtl = ctl
	b.daemons = []int{pri.Cmd.Process.Pid, sec.Cmd.Process.Pid}
	return dev, func() { b.primaryCtl, b.daemons = "", nil; b.detach(dev); stop(); os.RemoveAll(root) }, nil
}

// plaintextFlags run the pair's data link without TLS (both daemons).
var plaintextFlags = []string{"--insecure-plaintext-link"}

// credentials makes what the pair in root authenticates with and returns
// the daemons' flags for it: certificates from `ldmirror pki` (a, b), or
// for a plaintext link a shared secret.
func (b *bench) credentials(root string, plaintext bool) ([]string, error) {
	if plaintext {
		secret := filepath.Join(root, "secret")
		if err := os.WriteFile(secret, []byte("bench-secret-0123456789abcdef"), 0o600); err != nil {
			return nil, err
		}
		return []string{"--secret-file", secret}, nil
	}
	dir := filepath.Join(root, "pki")
	for _, args := range [][]string{{"init", "--dir", dir}, {"issue", "--dir", dir, "a"}, {"issue", "--dir", dir, "b"}} {
		if out, err := exec.Command(b.bin, append([]string{"pki"}, args...)...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("pki %s: %v: %s", args[0], err, out)
		}
	}
	return []string{"--tls-dir", dir}, nil
}

// linkNote says how the measured pair's link is protected (the TLS
// cipher suite negotiated), from the primary's status.
func (b *bench) linkNote() string {
	if b.primaryCtl == "" {
		return ""
	}
	st, err := b.status(b.primaryCtl)
	if err != nil || st.LinkSecurity == "" {
		return ""
	}
	return "link " + st.LinkSecurity
}

// raw is configuration (e): fio on a backing file with O_DIRECT, no FUSE,
// no loop device — the physical limit.
func (b *bench) raw() (string, func(), error) {
	f, err := os.CreateTemp(b.work, "raw-*.img")
	if err != nil {
		return "", nil, err
	}
	defer f.Close()
	if err := f.Truncate(b.sizeMiB << 20); err != nil {
		return "", nil, err
	}
	return f.Name(), func() { os.Remove(f.Name()) }, nil
}

// qemuQuorum is configuration (d): qemu-storage-daemon with a quorum node
// (vote-threshold 1) over a local file and an NBD export of a second
// qemu-storage-daemon's file, exported through FUSE and bound to a loop
// device — synchronous mirroring in userspace. The loop device runs without
// direct I/O: with it, qemu's FUSE export gets one write at a time (261 IOPS
// measured), so this gives qemu its better setting.
func (b *bench) qemuQuorum() (string, func(), error) {
	if _, err := exec.LookPath("qemu-storage-daemon"); err != nil {
		return "", nil, errors.New("needs qemu-storage-daemon (apt-get install qemu-system-common)")
	}
	dir, err := os.MkdirTemp(b.work, "qemu")
	if err != nil {
		return "", nil, err
	}
	local, remote, export := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img"), filepath.Join(dir, "volume")
	if err := b.qemuFiles(local, remote, export); err != nil {
		return "", nil, err
	}
	addr, err := freeAddr()
	if err != nil {
		return "", nil, err
	}
	peer, err := startQemuPeer(dir, remote, addr)
	if err != nil {
		return "", nil, err
	}
	pri, err := startQemuPrimary(dir, local, addr, export)
	if err != nil {
		peer.Stop()
		return "", nil, err
	}
	out, err := exec.Command("losetup", "-f", "--show", export).Output()
	if err != nil {
		pri.Stop()
		peer.Stop()
		return "", nil, fmt.Errorf("losetup: %w", err)
	}
	dev := strings.TrimSpace(string(out))
	return dev, func() { qemuTeardown(dev, export, dir, pri, peer) }, nil
}

// qemuFiles creates the two images, of the volume's size, and the empty
// file qemu's FUSE export mounts over.
func (b *bench) qemuFiles(local, remote, export string) error {
	for _, p := range []string{local, remote, export} {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			return err
		}
	}
	if err := os.Truncate(local, b.sizeMiB<<20); err != nil {
		return err
	}
	return os.Truncate(remote, b.sizeMiB<<20)
}

// startQemuPeer serves the remote image over NBD on addr and waits until it
// accepts connections.
func startQemuPeer(dir, remote, addr string) (*benchenv.Proc, error) {
	host, port, _ := net.SplitHostPort(addr)
	peer, err := benchenv.Start(filepath.Join(dir, "peer.log"), "qemu-storage-daemon",
		"--blockdev", "driver=file,node-name=peerfile,filename="+remote,
		"--nbd-server", fmt.Sprintf("addr.type=inet,addr.host=%s,addr.port=%s", host, port),
		"--export", "type=nbd,id=nbd0,node-name=peerfile,writable=on,name=vol")
	if err != nil {
		return nil, err
	}
	if err := waitUntil(10*time.Second, func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	}); err != nil {
		peer.Stop()
		return nil, fmt.Errorf("qemu NBD server: %w", err)
	}
	return peer, nil
}

// startQemuPrimary exports the quorum of the local image and the peer's NBD
// export at addr through FUSE on export, and waits until it is mounted.
func startQemuPrimary(dir, local, addr, export string) (*benchenv.Proc, error) {
	host, port, _ := net.SplitHostPort(addr)
	pri, err := benchenv.Start(filepath.Join(dir, "primary.log"), "qemu-storage-daemon",
		"--blockdev", "driver=file,node-name=local,filename="+local,
		"--blockdev", fmt.Sprintf("driver=nbd,node-name=remote,server.type=inet,server.host=%s,server.port=%s,export=vol", host, port),
		"--blockdev", `{"driver":"quorum","node-name":"q","vote-threshold":1,"children":["local","remote"]}`,
		"--export", "type=fuse,id=fuse0,node-name=q,mountpoint="+export+",writable=on")
	if err != nil {
		return nil, err
	}
	if err := waitUntil(10*time.Second, func() bool { return mounted(export) }); err != nil {
		pri.Stop()
		return nil, fmt.Errorf("qemu FUSE export: %w", err)
	}
	return pri, nil
}

// qemuTeardown detaches the loop device dev, stops both daemons, unmounts
// the export if qemu left it, and removes dir.
func qemuTeardown(dev, export, dir string, pri, peer *benchenv.Proc) {
	// losetup -d on a busy device only marks it; qemu cannot unmount
	// its export while the loop device holds it and then leaves the
	// mount behind.
	_ = exec.Command("losetup", "-d", dev).Run()
	_ = waitUntil(10*time.Second, func() bool {
		_, err := os.Stat(filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file"))
		return os.IsNotExist(err)
	})
	pri.Stop()
	peer.Stop()
	if mounted(export) {
		if exec.Command("umount", export).Run() != nil {
			_ = exec.Command("umount", "-l", export).Run()
		}
	}
	os.RemoveAll(dir)
}

func mounted(dir string) bool {
	mounts, _ := os.ReadFile("/proc/self/mounts")
	return strings.Contains(string(mounts), " "+dir+" ")
}

// freeAddr returns a 127.0.0.1 address that was free a moment ago.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// waitUntil polls cond every 50 ms until it holds or limit passes.
func waitUntil(limit time.Duration, cond func() bool) error {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready within %v", limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}
