package sdnotify

import (
	"net"
	"path/filepath"
	"testing"
	"time"
)

func TestSend(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	n := New(path, "30000000", "", 42)
	if err := n.Send(Ready, Status("primary,\nreplicating")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 256)
	m, err := ln.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(buf[:m]); got != "READY=1\nSTATUS=primary, replicating" {
		t.Fatalf("sent %q", got)
	}
	if d := n.WatchdogEvery(); d != 15*time.Second {
		t.Fatalf("WatchdogEvery = %v, want half of 30 s", d)
	}
	if d := New(path, "30000000", "7", 42).WatchdogEvery(); d != 0 {
		t.Fatalf("another process's watchdog: %v, want none", d)
	}
	var none *Notifier
	if err := none.Send(Ready); err != nil || none.Enabled() || New("", "", "", 1).Enabled() {
		t.Fatal("a notifier without a socket must do nothing")
	}
}
