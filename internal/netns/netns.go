package netns

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// Prefix starts the name of every namespace a lab creates.
	Prefix = "ldm-"
	// OwnerDir holds one file per live lab, named by its ID, holding the
	// owner's PID.
	OwnerDir = "/run/ldmirror-netns"
	// netnsDir is where ip(8) keeps named namespaces.
	netnsDir = "/run/netns"
	// bridgeHost names the bridge's namespace; no host may take it.
	bridgeHost = "br"
	// table is the nftables table a lab adds to a host for Partition and
	// BlockPort.
	table = "ldmlab"
	// cmdTimeout bounds one ip, tc or nft invocation.
	cmdTimeout = 30 * time.Second
)

var hostName = regexp.MustCompile(`^[a-z0-9]{1,12}$`)

// TB is what a lab needs from its owner: a test's testing.TB satisfies it,
// and a program that builds labs outside a test (scripts/torture)
// implements it. Fatalf and Skipf must not return; Cleanup functions run
// when the owner is done, last registered first.
type TB interface {
	Helper()
	Logf(format string, args ...any)
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
	Skipf(format string, args ...any)
	Cleanup(func())
}

// Lab is a set of test hosts on one bridge. Its methods are safe for
// concurrent use; those that take no error return fail the test.
type Lab struct {
	t      TB
	id     string
	subnet int
	hosts  []string

	mu      sync.Mutex
	closed  bool
	tables  map[string]bool // hosts with the partition table
	blocked map[drop]bool   // what each host drops
	netem   map[string]bool
}

// Available reports why labs cannot be built here, or nil.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("network namespaces need root")
	}
	for _, tool := range []string{"ip", "tc", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("needs %s(8): %w", tool, err)
		}
	}
	return nil
}

// NewLab creates one namespace per name (lower-case letters and digits, at
// most 12) plus the bridge's, cables them and registers Close with
// t.Cleanup. It skips the test when Available says no.
func NewLab(t TB, names ...string) *Lab {
	t.Helper()
	if err := Available(); err != nil {
		t.Skipf("netns lab: %v", err)
	}
	if len(names) == 0 || len(names) > 250 {
		t.Fatalf("netns lab: want 1 to 250 hosts, got %d", len(names))
	}
	for i, n := range names {
		if !hostName.MatchString(n) || n == bridgeHost || slices.Contains(names[:i], n) {
			t.Fatalf("netns lab: host name %q: want unique [a-z0-9]{1,12}, not %q", n, bridgeHost)
		}
	}
	if err := Sweep(); err != nil {
		t.Logf("netns lab: removing stale labs: %v", err)
	}
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("netns lab: %v", err)
	}
	l := &Lab{
		t: t, id: hex.EncodeToString(b[:3]), subnet: 1 + int(b[3])%254, hosts: slices.Clone(names),
		tables: map[string]bool{}, blocked: map[drop]bool{}, netem: map[string]bool{},
	}
	// The owner file comes first, so that a crash at any later point leaves
	// something Sweep finds.
	if err := os.MkdirAll(OwnerDir, 0o755); err != nil {
		t.Fatalf("netns lab: %v", err)
	}
	if err := os.WriteFile(filepath.Join(OwnerDir, l.id), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		t.Fatalf("netns lab: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("netns lab: %v", err)
		}
	})
	if err := l.build(); err != nil {
		t.Fatalf("netns lab %s: %v", l.id, err)
	}
	return l
}

func (l *Lab) build() error {
	br := l.ns(bridgeHost)
	if err := ipBatch("", "netns add "+br); err != nil {
		return err
	}
	if err := ipBatch(br, "link set lo up", "link add br0 type bridge", "link set br0 up"); err != nil {
		return err
	}
	for i, h := range l.hosts {
		ns := l.ns(h)
		if err := ipBatch("", "netns add "+ns); err != nil {
			return err
		}
		port := fmt.Sprintf("h%d", i)
		if err := ipBatch(br,
			fmt.Sprintf("link add %s type veth peer name eth0 netns %s", port, ns),
			fmt.Sprintf("link set %s master br0", port),
			fmt.Sprintf("link set %s up", port),
		); err != nil {
			return err
		}
		if err := ipBatch(ns,
			"link set lo up",
			fmt.Sprintf("addr add %s/24 dev eth0", l.Addr(h)),
			"link set eth0 up",
		); err != nil {
			return err
		}
	}
	return nil
}

// ID is the lab's random identifier, part of its namespaces' names.
func (l *Lab) ID() string { return l.id }

// Hosts returns the hosts' names in the order given to NewLab.
func (l *Lab) Hosts() []string { return slices.Clone(l.hosts) }

// NS returns the namespace name of host, for ip netns exec and nsenter.
func (l *Lab) NS(host string) string {
	l.index(host)
	return l.ns(host)
}

func (l *Lab) ns(host string) string { return Prefix + l.id + "-" + host }

// Addr returns host's IPv4 address.
func (l *Lab) Addr(host string) string {
	return fmt.Sprintf("10.231.%d.%d", l.subnet, l.index(host)+1)
}

func (l *Lab) index(host string) int {
	i := slices.Index(l.hosts, host)
	if i < 0 {
		l.t.Helper()
		l.t.Fatalf("netns lab %s has no host %q (hosts: %v)", l.id, host, l.hosts)
	}
	return i
}

// Command returns a command that runs in host's network namespace (via
// nsenter, which execs it: its PID is the command's).
//
// Only the network namespace: ip netns exec also unshares the mount
// namespace, and on a host whose / is a private mount the copy keeps every
// file system mounted at that moment (a test's ext4 on a loop device, a
// FUSE export) alive for as long as the command runs, even after the
// owner unmounted it; its loop device then never detaches.
func (l *Lab) Command(host string, name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + filepath.Join(netnsDir, l.NS(host)), name}, args...)...)
}

// Exec runs a command in host's namespace and returns its combined output.
func (l *Lab) Exec(ctx context.Context, host string, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + filepath.Join(netnsDir, l.NS(host)), name}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s on %s: %w: %s", name, host, err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// Do runs fn on an OS thread that has entered host's network namespace:
// sockets fn creates belong to it (and keep belonging to it afterwards).
// Goroutines fn starts run outside it. The thread is discarded afterwards.
func (l *Lab) Do(host string, fn func() error) error {
	f, err := os.Open(filepath.Join(netnsDir, l.NS(host)))
	if err != nil {
		return err
	}
	defer f.Close()
	errc := make(chan error, 1)
	go func() {
		// No UnlockOSThread: the runtime ends a locked thread with its
		// goroutine, so no other goroutine ever runs in host's namespace.
		runtime.LockOSThread()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("enter namespace of %s: %w", host, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Listen opens a listener in host's namespace.
func (l *Lab) Listen(host, network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := l.Do(host, func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// Dial connects from host's namespace; addr must be an IP literal and port.
func (l *Lab) Dial(ctx context.Context, host, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := l.Do(host, func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// LinkDown pulls host's cable: the bridge's end of its link goes down.
func (l *Lab) LinkDown(host string) {
	l.t.Helper()
	l.setLink(host, "down")
}

// LinkUp plugs host's cable back in.
func (l *Lab) LinkUp(host string) {
	l.t.Helper()
	l.setLink(host, "up")
}

func (l *Lab) setLink(host, state string) {
	l.t.Helper()
	if err := ipBatch(l.ns(bridgeHost), fmt.Sprintf("link set h%d %s", l.index(host), state)); err != nil {
		l.t.Fatalf("netns lab: link of %s %s: %v", host, state, err)
	}
}

// Partition makes a and b drop every packet from and to each other; hosts
// other than these two still reach both. It may be repeated.
func (l *Lab) Partition(a, b string) {
	l.t.Helper()
	if err := l.block(a, b, 0, true); err != nil {
		l.t.Fatalf("netns lab: partition %s from %s: %v", a, b, err)
	}
}

// Heal undoes Partition(a, b). It may be repeated.
func (l *Lab) Heal(a, b string) {
	l.t.Helper()
	if err := l.block(a, b, 0, false); err != nil {
		l.t.Fatalf("netns lab: heal %s and %s: %v", a, b, err)
	}
}

// BlockPort makes a and b drop the TCP and UDP packets between them whose
// source or destination port is port, in both directions: one service (say
// a control plane) is cut while the rest of their traffic flows. It may be
// repeated.
func (l *Lab) BlockPort(a, b string, port int) {
	l.t.Helper()
	if port < 1 || port > 65535 {
		l.t.Fatalf("netns lab: block port %d: want 1 to 65535", port)
	}
	if err := l.block(a, b, port, true); err != nil {
		l.t.Fatalf("netns lab: block port %d between %s and %s: %v", port, a, b, err)
	}
}

// UnblockPort undoes BlockPort(a, b, port). It may be repeated.
func (l *Lab) UnblockPort(a, b string, port int) {
	l.t.Helper()
	if port < 1 || port > 65535 {
		l.t.Fatalf("netns lab: unblock port %d: want 1 to 65535", port)
	}
	if err := l.block(a, b, port, false); err != nil {
		l.t.Fatalf("netns lab: unblock port %d between %s and %s: %v", port, a, b, err)
	}
}

// drop is one rule of a lab's partition table: host drops the packets
// exchanged with peer, those of one port only unless port is 0; with
// inbound only those that come from peer (a one-way partition).
type drop struct {
	host, peer string
	port       int
	inbound    bool
}

// DropFrom makes to drop every packet that comes from from, and only
// those: to's packets still reach from, so a TCP connection between them
// hangs rather than being refused, and a datagram protocol still hears
// to. It may be repeated; Partition and Heal do not touch it.
func (l *Lab) DropFrom(from, to string) {
	l.t.Helper()
	if err := l.blockInbound(from, to, true); err != nil {
		l.t.Fatalf("netns lab: drop the packets from %s at %s: %v", from, to, err)
	}
}

// UndropFrom undoes DropFrom(from, to). It may be repeated.
func (l *Lab) UndropFrom(from, to string) {
	l.t.Helper()
	if err := l.blockInbound(from, to, false); err != nil {
		l.t.Fatalf("netns lab: stop dropping the packets from %s at %s: %v", from, to, err)
	}
}

// blockInbound adds (on) or removes the rule by which to drops what comes
// from from.
func (l *Lab) blockInbound(from, to string, on bool) error {
	l.index(from)
	l.index(to)
	if from == to {
		return errors.New("a host cannot drop its own packets")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	d := drop{host: to, peer: from, inbound: true}
	if l.blocked[d] == on {
		return nil
	}
	if err := l.ensureTable(to); err != nil {
		return err
	}
	verb := "add"
	if !on {
		verb = "delete"
	}
	if err := nft(l.ns(to), fmt.Sprintf("%s element inet %s inbound { %s }\n", verb, table, l.Addr(from))); err != nil {
		return err
	}
	l.blocked[d] = on
	return nil
}

// ensureTable loads the partition table into host's namespace once; l.mu
// is held.
func (l *Lab) ensureTable(host string) error {
	if l.tables[host] {
		return nil
	}
	if err := nft(l.ns(host), partitionTable); err != nil {
		return err
	}
	l.tables[host] = true
	return nil
}

// block adds (on) or removes the drop rules between a and b, for every
// port if port is 0.
func (l *Lab) block(a, b string, port int, on bool) error {
	l.index(a)
	l.index(b)
	if a == b {
		return errors.New("a host cannot be partitioned from itself")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, d := range []drop{{host: a, peer: b, port: port}, {host: b, peer: a, port: port}} {
		if l.blocked[d] == on {
			continue
		}
		if err := l.ensureTable(d.host); err != nil {
			return err
		}
		verb := "add"
		if !on {
			verb = "delete"
		}
		elem := fmt.Sprintf("blocked { %s }", l.Addr(d.peer))
		if port != 0 {
			elem = fmt.Sprintf("ports { %s . %d }", l.Addr(d.peer), port)
		}
		if err := nft(l.ns(d.host), fmt.Sprintf("%s element inet %s %s\n", verb, table, elem)); err != nil {
			return err
		}
		l.blocked[d] = on
	}
	return nil
}

// partitionTable drops traffic to and from the addresses in @blocked, the
// TCP and UDP traffic of the address and port pairs in @ports (either
// end's port: the listener's port is the source of its replies), and the
// traffic from the addresses in @inbound (one way: nothing is dropped on
// the way out). Established connections are cut too: there is no
// conntrack accept.
const partitionTable = `table inet ` + table + ` {
	set blocked { type ipv4_addr; }
	set ports { type ipv4_addr . inet_service; }
	set inbound { type ipv4_addr; }
	chain input {
		type filter hook input priority 0; policy accept;
		ip saddr @blocked drop
		ip saddr @inbound drop
		meta l4proto { tcp, udp } ip saddr . th sport @ports drop
		meta l4proto { tcp, udp } ip saddr . th dport @ports drop
	}
	chain output {
		type filter hook output priority 0; policy accept;
		ip daddr @blocked drop
		meta l4proto { tcp, udp } ip daddr . th sport @ports drop
		meta l4proto { tcp, udp } ip daddr . th dport @ports drop
	}
}
`

// Netem shapes host's outgoing traffic with a netem qdisc, e.g.
// "delay 20ms", "delay 50ms 10ms loss 1%"; it replaces an earlier one. It
// skips the test if the kernel has no netem.
func (l *Lab) Netem(host, spec string) {
	l.t.Helper()
	ns := l.NS(host)
	args := append([]string{"-n", ns, "qdisc", "replace", "dev", "eth0", "root", "netem"}, strings.Fields(spec)...)
	if err := run("tc", args...); err != nil {
		if strings.Contains(err.Error(), "qdisc kind is unknown") {
			l.t.Skipf("netns lab: this kernel has no netem qdisc (sch_netem): %v", err)
		}
		l.t.Fatalf("netns lab: netem %q on %s: %v", spec, host, err)
	}
	l.mu.Lock()
	l.netem[host] = true
	l.mu.Unlock()
}

// ClearNetem removes host's netem qdisc, if any.
func (l *Lab) ClearNetem(host string) {
	l.t.Helper()
	l.mu.Lock()
	had := l.netem[host]
	delete(l.netem, host)
	l.mu.Unlock()
	if !had {
		return
	}
	if err := run("tc", "-n", l.NS(host), "qdisc", "del", "dev", "eth0", "root"); err != nil {
		l.t.Fatalf("netns lab: clear netem on %s: %v", host, err)
	}
}

// Close kills the processes left in the lab's namespaces and deletes the
// namespaces. It may be called more than once.
func (l *Lab) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	return destroy(l.id)
}

// Sweep removes the namespaces of labs whose owning process has exited,
// such as those of a test binary that crashed or was killed.
func Sweep() error {
	ents, err := os.ReadDir(OwnerDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(OwnerDir, e.Name()))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err == nil && pid > 0 && !errors.Is(unix.Kill(pid, 0), unix.ESRCH) {
			continue // owner alive
		}
		errs = append(errs, destroy(e.Name()))
	}
	return errors.Join(errs...)
}

// destroy deletes every namespace of lab id and its owner file.
func destroy(id string) error {
	ents, err := os.ReadDir(netnsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	var errs []error
	for _, e := range ents {
		ns := e.Name()
		if !strings.HasPrefix(ns, Prefix+id+"-") {
			continue
		}
		killAll(ns)
		if err := run("ip", "netns", "del", ns); err != nil {
			if _, serr := os.Stat(filepath.Join(netnsDir, ns)); !errors.Is(serr, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	if err := os.Remove(filepath.Join(OwnerDir, id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// killAll SIGKILLs the processes in namespace ns: only a lab's own
// namespaces are passed here, and whatever runs in them was started by the
// test that built the lab.
func killAll(ns string) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "pids", ns).Output()
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
	}
}

// ipBatch runs ip(8) commands, in namespace ns unless it is "".
func ipBatch(ns string, cmds ...string) error {
	args := []string{"-batch", "-"}
	if ns != "" {
		args = append([]string{"-n", ns}, args...)
	}
	return runInput(strings.Join(cmds, "\n")+"\n", "ip", args...)
}

// nft loads an nft script in namespace ns.
func nft(ns, script string) error {
	return runInput(script, "ip", "netns", "exec", ns, "nft", "-f", "-")
}

func run(name string, args ...string) error { return runInput("", name, args...) }

func runInput(stdin, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
