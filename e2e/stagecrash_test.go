package e2e

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/internal/peertest"
	"github.com/ldmirror/ldmirror/internal/poll"
	"github.com/ldmirror/ldmirror/node"
)

// stagePair is a mirrored pair without a control plane whose secondary,
// b, is away while a writes records: b's resync is then staged
// (package stage). before and after are the sha256 of b's backing file
// when it left and of a's once the writes stopped: the two states b may
// be in whatever happens to it during the resync.
type stagePair struct {
	*crashPair
	ws            *writers
	before, after string
}

// startStagePair starts the pair, writes 100 records with b up and 2,000
// more with b away, and stops the writes.
func startStagePair(t *testing.T) *stagePair {
	t.Helper()
	a, b, creds := pairDirs(t, "64MiB")
	addr := peertest.FreeAddr(t)
	p := &stagePair{crashPair: &crashPair{t: t, a: a, b: b,
		secArgs: []string{"--role", "secondary", "--node-id", "b", "--listen", addr, "--tls-dir", creds},
		priArgs: []string{"--role", "primary", "--node-id", "a", "--peer", addr, "--tls-dir", creds},
	}}
	p.sec = startDaemon(t, b, p.secArgs...)
	p.pri = startDaemon(t, a, p.priArgs...)
	waitClean(t, a, b)
	p.ws = newWriters(a)
	p.ws.start(&recordWriter{first: 0, slots: 4096})
	poll.Until(t, 20*time.Second, "100 records acknowledged", func() bool { return p.ws.acked() >= 100 })
	p.killSecondary()
	p.before = fileSHA256(t, img(b))
	n := p.ws.acked()
	poll.Until(t, 30*time.Second, "2,000 records written with b away", func() bool { return p.ws.acked() >= n+2000 })
	if err := p.ws.halt(t); err != nil {
		t.Fatal(err)
	}
	p.after = fileSHA256(t, img(a))
	if p.before == p.after {
		t.Fatal("a's volume did not change while b was away")
	}
	return p
}

// restartAlone restarts b's daemon with a down, waits until it is done
// with any apply it found committed, and returns its status.
func (p *stagePair) restartAlone() node.Status {
	p.t.Helper()
	p.sec = startDaemon(p.t, p.b, p.secArgs...)
	var st node.Status
	poll.Until(p.t, 30*time.Second, "b to end the apply it found", func() bool {
		var err error
		st, err = status(p.b)
		return err == nil && !strings.HasPrefix(st.ResyncTarget, "applying")
	})
	return st
}

// checkState asserts that b's volume is in the state wantAfter names.
func (p *stagePair) checkState(wantAfter bool) {
	p.t.Helper()
	got := fileSHA256(p.t, img(p.b))
	switch {
	case got != p.before && got != p.after:
		p.t.Fatal("b's volume is neither as it was when b left nor as a's: inconsistent")
	case wantAfter && got != p.after:
		p.t.Fatal("b's volume is as it was when b left; want a's: the committed resync was not applied")
	case !wantAfter && got != p.before:
		p.t.Fatal("b's volume is a's; want as it was when b left: an uncommitted resync was applied")
	}
}

// resume restarts a and checks that the pair ends in sync with every
// acknowledged record on both hosts.
func (p *stagePair) resume() {
	p.t.Helper()
	p.pri = startDaemon(p.t, p.a, p.priArgs...)
	waitClean(p.t, p.a, p.b)
	sameBytes(p.t, img(p.a), img(p.b))
	p.ws.check(p.t, img(p.a))
	p.ws.check(p.t, img(p.b))
}

// TestResyncTargetKilledAtEachStep kills a resync's target (b) at each
// step of the commit and apply of its staged resync, restarts it with its
// source down and checks that its volume is in one of the two consistent
// states: as it was when b left (the commit did not happen) or a's (it
// did, and the restart applied it). The source, back, then brings b in
// sync.
func TestResyncTargetKilledAtEachStep(t *testing.T) {
	requireE2E(t)
	for _, tc := range []struct {
		point     string
		committed bool
	}{
		{"stage-commit-before-header", false},
		{"stage-committed-before-apply", true},
		{"stage-mid-apply@3", true},
		{"stage-applied-before-remove", true},
	} {
		t.Run(tc.point, func(t *testing.T) {
			p := startStagePair(t)
			p.sec = startDaemonIn(t, armed(tc.point), p.b, p.secArgs...)
			waitCrash(t, p.sec, tc.point, time.Minute)
			p.pri.stop(t)
			st := p.restartAlone()
			t.Logf("b restarted after its crash at %s: %q", tc.point, st.ResyncTarget)
			p.checkState(tc.committed)
			p.resume()
		})
	}
}

// TestResyncAbortKilled is `ldmirror resync --abort` of a resync whose
// source died at half of it, with the target killed inside the discard:
// restarted, its volume is as it was when it left; the abort, run again,
// completes; the source, back, resyncs it.
func TestResyncAbortKilled(t *testing.T) {
	requireE2E(t)
	p := startStagePair(t)
	// a again, with the crash point armed: its first process counted the
	// percents of the pair's first resync.
	p.pri.stop(t)
	p.pri = startDaemonIn(t, armed("resync-percent@50"), p.a, p.priArgs...)
	p.sec = startDaemonIn(t, armed("stage-discard-before-remove"), p.b, p.secArgs...)
	waitCrash(t, p.pri, "resync-percent", time.Minute)
	poll.Until(t, 20*time.Second, "b to lose its source", func() bool {
		st, err := status(p.b)
		return err == nil && st.Link != node.LinkConnected && strings.HasPrefix(st.ResyncTarget, "outdated, consistent as of ")
	})
	p.checkState(false)
	out, err := exec.Command(binary, "resync", "--abort", "--dir", p.b).CombinedOutput()
	t.Logf("resync --abort, killed: %v %s", err, out)
	waitCrash(t, p.sec, "stage-discard-before-remove", 10*time.Second)
	st := p.restartAlone()
	if want := "outdated, consistent as of "; !strings.HasPrefix(st.ResyncTarget, want) {
		t.Fatalf("b after its restart: %q; want %q...", st.ResyncTarget, want)
	}
	p.checkState(false)
	out2 := ldmirror(t, "resync", "--abort", "--dir", p.b)
	if want := "resync aborted: this host keeps its data as of "; !strings.HasPrefix(out2, want) {
		t.Fatalf("resync --abort printed %q; want %q...", out2, want)
	}
	if st := statusJSON(t, p.b); st.ResyncTarget != "" || st.BehindBlocks == 0 {
		t.Fatalf("b after the abort: resync %q, %d blocks behind; want nothing staged, the discarded blocks behind", st.ResyncTarget, st.BehindBlocks)
	}
	p.checkState(false)
	p.resume()
}
