package netns_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/internal/netns"
)

// serve accepts and closes connections on a listener in host until the test
// ends, and returns the address to dial.
func serve(t *testing.T, lab *netns.Lab, host string) string {
	t.Helper()
	return serveAt(t, lab, host, 0)
}

// serveAt is serve on a given port (0: any).
func serveAt(t *testing.T, lab *netns.Lab, host string, port int) string {
	t.Helper()
	ln, err := lab.Listen(host, "tcp", net.JoinHostPort(lab.Addr(host), strconv.Itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return ln.Addr().String()
}

// reach reports whether from can open a TCP connection to addr within 1 s.
func reach(t *testing.T, lab *netns.Lab, from, addr string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c, err := lab.Dial(ctx, from, "tcp", addr)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func TestLab(t *testing.T) {
	if testing.Short() {
		t.Skip("builds network namespaces; skipped with -short")
	}
	lab := netns.NewLab(t, "a", "b", "c")
	addrB, addrC := serve(t, lab, "b"), serve(t, lab, "c")

	if !reach(t, lab, "a", addrB) || !reach(t, lab, "c", addrB) {
		t.Fatal("hosts on one lab do not reach each other")
	}
	// The machine's own namespace is not on the lab's network.
	if c, err := net.DialTimeout("tcp", addrB, 300*time.Millisecond); err == nil {
		c.Close()
		t.Fatal("the root namespace reaches a lab host")
	}

	lab.Partition("a", "b")
	lab.Partition("a", "b") // repeating is harmless
	if reach(t, lab, "a", addrB) {
		t.Fatal("a reaches b across a partition")
	}
	if !reach(t, lab, "c", addrB) || !reach(t, lab, "a", addrC) {
		t.Fatal("a partition between a and b cut c off")
	}
	lab.Heal("a", "b")
	lab.Heal("a", "b")
	if !reach(t, lab, "a", addrB) {
		t.Fatal("a does not reach b after heal")
	}

	lab.LinkDown("c")
	if reach(t, lab, "a", addrC) {
		t.Fatal("a reaches c whose link is down")
	}
	lab.LinkUp("c")
	if !reach(t, lab, "a", addrC) {
		t.Fatal("a does not reach c after its link is back up")
	}

	out, err := lab.Exec(context.Background(), "b", "ip", "-brief", "addr", "show", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	if want := lab.Addr("b"); !strings.Contains(string(out), want) {
		t.Fatalf("ip addr in b shows %q, want %s", out, want)
	}
}

// BlockPort cuts one port between two hosts, in both directions, and
// nothing else.
func TestBlockPort(t *testing.T) {
	if testing.Short() {
		t.Skip("builds network namespaces; skipped with -short")
	}
	lab := netns.NewLab(t, "a", "b", "c")
	cut, open := serve(t, lab, "b"), serve(t, lab, "b")
	_, p, err := net.SplitHostPort(cut)
	if err != nil {
		t.Fatal(err)
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	// The same port on a: namespaces have ports of their own.
	cutA := serveAt(t, lab, "a", port)

	lab.BlockPort("a", "b", port)
	lab.BlockPort("a", "b", port) // repeating is harmless
	if reach(t, lab, "a", cut) || reach(t, lab, "b", cutA) {
		t.Fatalf("a and b reach each other on blocked port %d", port)
	}
	if !reach(t, lab, "a", open) || !reach(t, lab, "c", cut) || !reach(t, lab, "c", cutA) {
		t.Fatalf("blocking port %d between a and b cut other traffic", port)
	}
	lab.UnblockPort("a", "b", port)
	lab.UnblockPort("a", "b", port)
	if !reach(t, lab, "a", cut) || !reach(t, lab, "b", cutA) {
		t.Fatalf("a and b do not reach each other on port %d after UnblockPort", port)
	}
}

// hears reports whether a datagram from from reaches a socket on to within
// 500 ms: unlike a TCP connection, it needs one direction only.
func hears(t *testing.T, lab *netns.Lab, from, to string) bool {
	t.Helper()
	var pc net.PacketConn
	if err := lab.Do(to, func() (err error) {
		pc, err = net.ListenPacket("udp", net.JoinHostPort(lab.Addr(to), "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	c, err := lab.Dial(context.Background(), from, "udp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		return false
	}
	_ = pc.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	buf := make([]byte, 16)
	n, _, err := pc.ReadFrom(buf)
	return err == nil && string(buf[:n]) == "ping"
}

// DropFrom cuts one direction between two hosts, and nothing else.
func TestDropFrom(t *testing.T) {
	if testing.Short() {
		t.Skip("builds network namespaces; skipped with -short")
	}
	lab := netns.NewLab(t, "a", "b", "c")
	if !hears(t, lab, "a", "b") || !hears(t, lab, "b", "a") {
		t.Fatal("a and b do not hear each other before DropFrom")
	}
	lab.DropFrom("a", "b")
	lab.DropFrom("a", "b") // repeating is harmless
	if hears(t, lab, "a", "b") {
		t.Fatal("b hears a after DropFrom(a, b)")
	}
	if !hears(t, lab, "b", "a") || !hears(t, lab, "c", "b") || !hears(t, lab, "a", "c") {
		t.Fatal("DropFrom(a, b) cut more than a's packets to b")
	}
	// Partition and Heal of the pair leave the one-way rule in place.
	lab.Partition("a", "b")
	lab.Heal("a", "b")
	if hears(t, lab, "a", "b") {
		t.Fatal("Heal(a, b) removed DropFrom(a, b)")
	}
	lab.UndropFrom("a", "b")
	lab.UndropFrom("a", "b")
	if !hears(t, lab, "a", "b") {
		t.Fatal("b does not hear a after UndropFrom")
	}
}

func TestNetem(t *testing.T) {
	if testing.Short() {
		t.Skip("builds network namespaces; skipped with -short")
	}
	lab := netns.NewLab(t, "a", "b")
	addrB := serve(t, lab, "b")
	lab.Netem("a", "delay 100ms")
	start := time.Now()
	if !reach(t, lab, "a", addrB) {
		t.Fatal("a does not reach b with netem delay")
	}
	if d := time.Since(start); d < 100*time.Millisecond {
		t.Fatalf("connect with 100ms netem delay took %v", d)
	}
	lab.ClearNetem("a")
	start = time.Now()
	if !reach(t, lab, "a", addrB) || time.Since(start) >= 100*time.Millisecond {
		t.Fatal("netem delay still applies after ClearNetem")
	}
}

// A lab whose owner died is removed by the next NewLab (via Sweep), and
// Close removes every namespace and process of its own lab.
func TestCleanup(t *testing.T) {
	if testing.Short() {
		t.Skip("builds network namespaces; skipped with -short")
	}
	if err := netns.Available(); err != nil {
		t.Skip(err)
	}
	// A lab "owned" by a process that has exited.
	dead := exitedPID(t)
	stale := &fakeTB{TB: t}
	lab := netns.NewLab(stale, "x")
	ns := lab.NS("x")
	if err := os.WriteFile(filepath.Join(netns.OwnerDir, lab.ID()), []byte(dead), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := netns.Sweep(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join("/run/netns", ns)); !os.IsNotExist(err) {
		t.Fatalf("namespace %s of a dead owner survived Sweep: %v", ns, err)
	}

	own := netns.NewLab(t, "y")
	sleeper := own.Command("y", "sleep", "600")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- sleeper.Wait() }()
	if err := own.Close(); err != nil {
		t.Fatal(err)
	}
	if err := own.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close left a process running in the lab")
	}
	if _, err := os.Stat(filepath.Join("/run/netns", own.NS("y"))); !os.IsNotExist(err) {
		t.Fatalf("namespace survived Close: %v", err)
	}
}

// exitedPID returns the PID of a process that has exited.
func exitedPID(t *testing.T) string {
	t.Helper()
	p, err := os.StartProcess("/bin/true", []string{"true"}, &os.ProcAttr{})
	if err != nil {
		t.Fatal(err)
	}
	st, err := p.Wait()
	if err != nil {
		t.Fatal(err)
	}
	return strconv.Itoa(st.Pid())
}

// fakeTB is a TB whose cleanups do not run, like a test binary that died.
type fakeTB struct{ testing.TB }

func (fakeTB) Cleanup(func()) {}
