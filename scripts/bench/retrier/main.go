// Command retrier measures the LDAP call retrier proxy (`ldmirror retrier`)
// against the slapd behind it: the same load, straight at slapd and through
// the proxy, alternating round by round (ABBA) so that the drift of this
// shared machine cancels out, and writes the table to docs/benchmarks.md.
//
//	go run ./scripts/bench/retrier [-rounds 5] [-duration 5s] [-out docs/benchmarks.md]
//
// Loads: search by uid (one entry of 10,000, three attributes) with 1 and 4
// workers, modify (replace description) and add (a new inetOrgPerson) with
// 4 workers. Each worker is one connection bound as the root DN running one
// synchronous operation at a time. It needs slapd (apt-get install slapd).
package main

import (
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/ldmirror/ldmirror/scripts/bench/internal/benchenv"
)

var workloads = []workload{
	{name: "search-1", label: "search by uid, 1 worker", workers: 1, op: searchLoad},
	{name: "search-4", label: "search by uid, 4 workers", workers: 4, op: searchLoad},
	{name: "modify-4", label: "modify, 4 workers", workers: 4, op: func(run string, w, i int, rng *rand.Rand) *ber.Packet {
		return modifyOp(fmt.Sprintf("uid=user%06d,%s", rng.IntN(entries), people), fmt.Sprintf("%s %d %d", run, w, i))
	}},
	{name: "add-4", label: "add, 4 workers", workers: 4, op: func(run string, w, i int, _ *rand.Rand) *ber.Packet {
		return addOp(people, fmt.Sprintf("%s-%d-%d", run, w, i))
	}},
}

const entries = 10000

func searchLoad(_ string, _, _ int, rng *rand.Rand) *ber.Packet {
	return searchUID(people, fmt.Sprintf("user%06d", rng.IntN(entries)))
}

func main() {
	rounds := flag.Int("rounds", 5, "rounds; each runs every load straight at slapd and through the proxy")
	duration := flag.Duration("duration", 5*time.Second, "length of one measurement")
	out := flag.String("out", "docs/benchmarks.md", "markdown file whose retrier section is replaced; empty: print only")
	bin := flag.String("ldmirror", "", "ldmirror binary (default: built from the working tree)")
	nosync := flag.Bool("nosync", false, "slapd without fsync (dbnosync): writes cost CPU only")
	only := flag.String("loads", "", "comma-separated loads to run (default all: search-1,search-4,modify-4,add-4)")
	profile := flag.String("cpuprofile", "", "write the proxy's CPU profile to `file`")
	flag.Parse()
	var extra []string
	if *profile != "" {
		extra = []string{"--cpu-profile", *profile}
	}
	if err := run(*rounds, *duration, *out, *bin, *nosync, *only, extra); err != nil {
		fmt.Fprintln(os.Stderr, "retrier bench:", err)
		os.Exit(1)
	}
}

func run(rounds int, d time.Duration, out, bin string, nosync bool, only string, proxyArgs []string) error {
	if _, err := os.Stat(slapdBinary); err != nil {
		return errors.New("needs slapd (apt-get install slapd)")
	}
	loads := workloads
	if only != "" {
		loads = nil
		for _, w := range workloads {
			if strings.Contains(","+only+",", ","+w.name+",") {
				loads = append(loads, w)
			}
		}
	}
	dir, err := os.MkdirTemp("", "retrier-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	m := describeMachine()
	if bin == "" {
		bin = filepath.Join(dir, "ldmirror")
		if out, err := exec.Command("go", "build", "-o", bin, "./cmd/ldmirror").CombinedOutput(); err != nil {
			return fmt.Errorf("go build ./cmd/ldmirror: %v: %s", err, out)
		}
	}
	slapd, slapdAddr, err := startSlapd(dir, entries, nosync)
	if err != nil {
		return err
	}
	defer slapd.Stop()
	proxy, proxyAddr, err := startProxy(bin, dir, slapdAddr, proxyArgs...)
	if err != nil {
		return err
	}
	defer proxy.Stop()

	targets := []target{{name: "direct", addr: slapdAddr}, {name: "proxy", addr: proxyAddr, proc: proxy}}
	// Warm up both paths: slapd's caches and the proxy's.
	for _, t := range targets {
		if _, err := runLoad(t.addr, workloads[1], "warm"+t.name, time.Second); err != nil {
			return fmt.Errorf("warm-up %s: %w", t.name, err)
		}
	}
	res := &results{machine: m, rounds: rounds, duration: d, nosync: nosync, loads: loads}
	begin := time.Now()
	for r := range rounds {
		for _, w := range loads {
			order := targets
			if r%2 == 1 {
				order = []target{targets[1], targets[0]}
			}
			for _, t := range order {
				s, err := measure(t, slapd, w, fmt.Sprintf("r%d%s", r, t.name), d)
				if err != nil {
					return fmt.Errorf("round %d %s %s: %w", r, w.name, t.name, err)
				}
				fmt.Fprintf(os.Stderr, "round %d %-8s %-6s %8.0f ops/s p50 %6.0f µs p99 %6.0f µs busy %3.0f%% slapd %3.0f µs/op proxy %3.0f µs/op\n",
					r, w.name, t.name, s.rate(), us(s.p50), us(s.p99), 100*s.busy, us(s.slapdCPU), us(s.proxyCPU))
				res.add(w.name, t.name, s)
			}
		}
	}
	res.wall = time.Since(begin)
	md := res.markdown()
	fmt.Print(md)
	if out == "" {
		return nil
	}
	return replaceSection(out, md)
}

type target struct {
	name string
	addr string
	proc *benchenv.Proc // the proxy, nil for direct
}

// sample is one measurement with the machine's and the processes' CPU.
type sample struct {
	measurement
	busy     float64       // fraction of the machine's CPU time busy
	slapdCPU time.Duration // slapd's CPU per operation
	proxyCPU time.Duration // the proxy's CPU per operation (proxy target only)
}

func measure(t target, slapd *benchenv.Proc, w workload, run string, d time.Duration) (sample, error) {
	busy0, total0 := cpuStat()
	s0 := slapd.CPU()
	var p0 time.Duration
	if t.proc != nil {
		p0 = t.proc.CPU()
	}
	m, err := runLoad(t.addr, w, run, d)
	if err != nil {
		return sample{}, err
	}
	busy1, total1 := cpuStat()
	s := sample{measurement: m}
	if total1 > total0 {
		s.busy = float64(busy1-busy0) / float64(total1-total0)
	}
	if m.ops > 0 {
		s.slapdCPU = (slapd.CPU() - s0) / time.Duration(m.ops)
		if t.proc != nil {
			s.proxyCPU = (t.proc.CPU() - p0) / time.Duration(m.ops)
		}
	}
	return s, nil
}

// cpuStat returns the busy and total jiffies of the machine (/proc/stat).
func cpuStat() (busy, total int64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	for i, v := range f[1:] {
		var n int64
		fmt.Sscan(v, &n)
		total += n
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return busy, total
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
