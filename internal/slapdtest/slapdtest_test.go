package slapdtest

import (
	"testing"
)

func TestStartKillRestartSharedData(t *testing.T) {
	a := Start(t, Options{Monitor: true})
	c, err := a.Dial()
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	ops, err := a.Operations()
	if err != nil {
		t.Fatal(err)
	}
	if ops["Bind"] < 2 {
		t.Fatalf("monitor counts %d binds, want >= 2 (ready probe, base add, this read)", ops["Bind"])
	}
	if err := a.Kill(); err != nil {
		t.Fatal(err)
	}
	if a.Running() {
		t.Fatal("running after Kill")
	}
	if _, err := a.Dial(); err == nil {
		t.Fatal("dial succeeded after Kill")
	}
	// A second server on the same data directory sees the base entry.
	b := New(t, Options{DataDir: a.DataDir})
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	if err := b.Restart(); err != nil {
		t.Fatal(err)
	}
	c, err = b.Dial()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ok, err := c.Compare(b.Suffix, "o", "example"); err != nil || !ok {
		t.Fatalf("base entry after restart on shared data: ok=%v err=%v", ok, err)
	}
}
