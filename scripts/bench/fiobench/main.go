// Command fiobench measures ldmirror configurations side by side with fio
// through the loop device over the FUSE export, alternating configurations
// round by round so that machine drift cancels out, and prints medians and
// ratios. It needs root, fio and a built ldmirror.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/ldmirror/ldmirror/node"
)

// workload is one fio job.
type workload struct {
	name string
	args []string
}

var workloads = []workload{
	{"4k-randwrite-qd16", []string{"--rw=randwrite", "--bs=4k", "--iodepth=16"}},
	{"1m-seqwrite-qd4", []string{"--rw=write", "--bs=1m", "--iodepth=4"}},
}

// result is one fio run's figures.
type result struct {
	IOPS   float64
	MBps   float64
	P50us  float64
	P99us  float64
	config string
	load   string
}

// setup describes how a configuration brings up a loop device and tears it down.
type setup func(b *bench) (dev string, teardown func(), err error)

type bench struct {
	bin     string
	sizeMiB int64
	work    string
	runtime time.Duration
}

func main() {
	b := &bench{}
	flag.StringVar(&b.bin, "ldmirror", "ldmirror", "path of the ldmirror binary")
	flag.Int64Var(&b.sizeMiB, "size-mib", 1024, "volume size in MiB")
	flag.DurationVar(&b.runtime, "runtime", 10*time.Second, "fio runtime per workload")
	rounds := flag.Int("rounds", 3, "rounds; each runs every configuration once, alternating")
	configs := flag.String("configs", "passthrough,sync", "configurations, in round order")
	out := flag.String("markdown", "", "also write the table as markdown to this file")
	flag.Parse()
	if os.Geteuid() != 0 {
		fatal(errors.New("needs root (FUSE mounts and loop devices)"))
	}
	if _, err := exec.LookPath("fio"); err != nil {
		fatal(errors.New("needs fio (apt-get install fio)"))
	}
	var err error
	if b.work, err = os.MkdirTemp("", "ldmirror-bench"); err != nil {
		fatal(err)
	}
	defer os.RemoveAll(b.work)
	setups := map[string]setup{
		"passthrough": (*bench).passthrough,
		"sync":        func(b *bench) (string, func(), error) { return b.mirrored() },
		"sync-noal":   func(b *bench) (string, func(), error) { return b.mirrored("--activity-log=false") },
		"qemu-quorum": (*bench).qemuQuorum,
		"raw":         (*bench).raw,
	}
	names := strings.Split(*configs, ",")
	for _, n := range names {
		if setups[n] == nil {
			fatal(fmt.Errorf("unknown configuration %q (have passthrough, sync, sync-noal, qemu-quorum, raw)", n))
		}
	}
	var results []result
	for r := 1; r <= *rounds; r++ {
		for _, name := range names {
			dev, teardown, err := setups[name](b)
			if err != nil {
				fatal(fmt.Errorf("%s: %w", name, err))
			}
			for _, w := range workloads {
				res, err := b.fio(dev, w)
				if err != nil {
					teardown()
					fatal(fmt.Errorf("%s %s: %w", name, w.name, err))
				}
				res.config, res.load = name, w.name
				fmt.Fprintf(os.Stderr, "round %d %-12s %-18s %8.0f IOPS %8.1f MB/s\n", r, name, w.name, res.IOPS, res.MBps)
				results = append(results, res)
			}
			teardown()
		}
	}
	table := report(results, names)
	fmt.Print(table)
	if *out != "" {
		if err := os.WriteFile(*out, []byte(table), 0o644); err != nil {
			fatal(err)
		}
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "fiobench:", err)
	os.Exit(1)
}

func (b *bench) fio(dev string, w workload) (result, error) {
	args := append([]string{"--name=" + w.name, "--filename=" + dev, "--ioengine=libaio", "--direct=1",
		"--time_based", "--runtime=" + fmt.Sprint(int(b.runtime.Seconds())), "--ramp_time=2",
		"--output-format=json"}, w.args...)
	out, err := exec.Command("fio", args...).Output()
	if err != nil {
		return result{}, err
	}
	var rep struct {
		Jobs []struct {
			Write struct {
				IOPS  float64 `json:"iops"`
				BW    float64 `json:"bw_bytes"`
				ClatN struct {
					Percentile map[string]float64 `json:"percentile"`
				} `json:"clat_ns"`
			} `json:"write"`
		} `json:"jobs"`
	}
	// fio may print warnings before the JSON.
	if i := bytes.IndexByte(out, '{'); i > 0 {
		out = out[i:]
	}
	if err := json.Unmarshal(out, &rep); err != nil || len(rep.Jobs) == 0 {
		return result{}, fmt.Errorf("parse fio output: %v", err)
	}
	wr := rep.Jobs[0].Write
	return result{
		IOPS:  wr.IOPS,
		MBps:  wr.BW / 1e6,
		P50us: wr.ClatN.Percentile["50.000000"] / 1e3,
		P99us: wr.ClatN.Percentile["99.000000"] / 1e3,
	}, nil
}

// daemon starts `ldmirror daemon` and waits for its control socket.
func (b *bench) daemon(dir string, args ...string) (*exec.Cmd, error) {
	logf, err := os.Create(filepath.Join(dir, "daemon.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(b.bin, append([]string{"daemon", "--dir", dir, "--log-level", "warn"}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	err = waitUntil(10*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		st, err := node.FetchStatus(ctx, filepath.Join(dir, node.ControlFile))
		return err == nil && (st.Link == node.LinkConnected || st.Link == node.LinkStandalone || st.Role == node.RoleSecondary)
	})
	if err != nil {
		cmd.Process.Kill()
		return nil, fmt.Errorf("daemon in %s: %w (see %s)", dir, err, logf.Name())
	}
	return cmd, nil
}

func stop(cmd *exec.Cmd) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
	}
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
		stop(d)
		return "", nil, err
	}
	return dev, func() { b.detach(dev); stop(d); os.RemoveAll(dir) }, nil
}

// mirrored is configuration (b): sync mirroring to a secondary on 127.0.0.1,
// the primary started with extra flags.
func (b *bench) mirrored(extra ...string) (string, func(), error) {
	root, err := os.MkdirTemp(b.work, "sync")
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
	secret := filepath.Join(root, "secret")
	if err := os.WriteFile(secret, []byte("bench-secret-0123456789abcdef"), 0o600); err != nil {
		return "", nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	sec, err := b.daemon(s, "--role", "secondary", "--node-id", "b", "--listen", addr, "--secret-file", secret)
	if err != nil {
		return "", nil, err
	}
	pri, err := b.daemon(a, append([]string{"--role", "primary", "--node-id", "a", "--peer", addr, "--secret-file", secret}, extra...)...)
	if err != nil {
		stop(sec)
		return "", nil, err
	}
	dev, err := b.attach(a)
	if err != nil {
		stop(pri)
		stop(sec)
		return "", nil, err
	}
	return dev, func() { b.detach(dev); stop(pri); stop(sec); os.RemoveAll(root) }, nil
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
	for _, p := range []string{local, remote, export} {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			return "", nil, err
		}
	}
	if err := os.Truncate(local, b.sizeMiB<<20); err != nil {
		return "", nil, err
	}
	if err := os.Truncate(remote, b.sizeMiB<<20); err != nil {
		return "", nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	addr := ln.Addr().(*net.TCPAddr)
	ln.Close()
	peer := exec.Command("qemu-storage-daemon",
		"--blockdev", "driver=file,node-name=peerfile,filename="+remote,
		"--nbd-server", fmt.Sprintf("addr.type=inet,addr.host=127.0.0.1,addr.port=%d", addr.Port),
		"--export", "type=nbd,id=nbd0,node-name=peerfile,writable=on,name=vol")
	if err := peer.Start(); err != nil {
		return "", nil, err
	}
	stopAll := func(cmds ...*exec.Cmd) {
		for _, c := range cmds {
			stop(c)
		}
	}
	if err := waitUntil(10*time.Second, func() bool {
		c, err := net.Dial("tcp", addr.String())
		if err == nil {
			c.Close()
		}
		return err == nil
	}); err != nil {
		stopAll(peer)
		return "", nil, fmt.Errorf("qemu NBD server: %w", err)
	}
	pri := exec.Command("qemu-storage-daemon",
		"--blockdev", "driver=file,node-name=local,filename="+local,
		"--blockdev", fmt.Sprintf("driver=nbd,node-name=remote,server.type=inet,server.host=127.0.0.1,server.port=%d,export=vol", addr.Port),
		"--blockdev", `{"driver":"quorum","node-name":"q","vote-threshold":1,"children":["local","remote"]}`,
		"--export", "type=fuse,id=fuse0,node-name=q,mountpoint="+export+",writable=on")
	if err := pri.Start(); err != nil {
		stopAll(peer)
		return "", nil, err
	}
	if err := waitUntil(10*time.Second, func() bool {
		mounts, _ := os.ReadFile("/proc/self/mounts")
		return strings.Contains(string(mounts), " "+export+" ")
	}); err != nil {
		stopAll(pri, peer)
		return "", nil, fmt.Errorf("qemu FUSE export: %w", err)
	}
	out, err := exec.Command("losetup", "-f", "--show", export).Output()
	if err != nil {
		stopAll(pri, peer)
		return "", nil, fmt.Errorf("losetup: %w", err)
	}
	dev := strings.TrimSpace(string(out))
	return dev, func() {
		_ = exec.Command("losetup", "-d", dev).Run()
		stopAll(pri, peer)
		os.RemoveAll(dir)
	}, nil
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

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// report prints medians per configuration and workload, and the ratio of
// every configuration to the first.
func report(results []result, configs []string) string {
	var sb strings.Builder
	med := map[[2]string]result{}
	for _, c := range configs {
		for _, w := range workloads {
			var iops, mbps, p50, p99 []float64
			for _, r := range results {
				if r.config == c && r.load == w.name {
					iops, mbps = append(iops, r.IOPS), append(mbps, r.MBps)
					p50, p99 = append(p50, r.P50us), append(p99, r.P99us)
				}
			}
			med[[2]string{c, w.name}] = result{IOPS: median(iops), MBps: median(mbps), P50us: median(p50), P99us: median(p99)}
		}
	}
	n := 0
	for _, r := range results {
		if r.config == configs[0] && r.load == workloads[0].name {
			n++
		}
	}
	fmt.Fprintf(&sb, "Medians of %d alternating rounds (fio libaio direct=1 on the loop device over the FUSE export)\n\n", n)
	fmt.Fprintf(&sb, "| configuration | workload | IOPS | MB/s | p50 µs | p99 µs | ratio to %s |\n|---|---|---:|---:|---:|---:|---:|\n", configs[0])
	for _, w := range workloads {
		base := med[[2]string{configs[0], w.name}]
		for _, c := range configs {
			m := med[[2]string{c, w.name}]
			ratio := m.IOPS / base.IOPS
			fmt.Fprintf(&sb, "| %s | %s | %.0f | %.1f | %.0f | %.0f | %.2f |\n", c, w.name, m.IOPS, m.MBps, m.P50us, m.P99us, ratio)
		}
	}
	if slices.Contains(configs, "sync") && slices.Contains(configs, "qemu-quorum") {
		sb.WriteString("\n")
		for _, w := range workloads {
			fmt.Fprintf(&sb, "sync / qemu-quorum, %s: %.2f\n", w.name,
				med[[2]string{"sync", w.name}].IOPS/med[[2]string{"qemu-quorum", w.name}].IOPS)
		}
	}
	return sb.String()
}
