package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"

	"github.com/ldmirror/ldmirror/events"
	"github.com/ldmirror/ldmirror/internal/netns"
	"github.com/ldmirror/ldmirror/internal/poll"
	"github.com/ldmirror/ldmirror/mirror"
	"github.com/ldmirror/ldmirror/node"
	"github.com/ldmirror/ldmirror/volume"
)

// eventLog is the output of a running `ldmirror events r0`, one decoded
// event per line.
type eventLog struct {
	mu  sync.Mutex
	evs []events.Event
	bad []string // lines that are not one JSON event
}

// followEvents starts `ldmirror events r0 ARGS` on host; the test's
// cleanup ends it.
func (rl *resourceLab) followEvents(host string, args ...string) *eventLog {
	rl.t.Helper()
	return followEvents(rl.t, rl.command(host, append([]string{"events", resourceName}, args...)...))
}

// followEvents starts cmd, an `ldmirror events`; the test's cleanup ends
// it.
func followEvents(t *testing.T, cmd *exec.Cmd) *eventLog {
	t.Helper()
	el := &eventLog{}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	read := make(chan struct{})
	go func() {
		defer close(read)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var e events.Event
			err := json.Unmarshal(sc.Bytes(), &e)
			el.mu.Lock()
			if err != nil || e.Kind == "" {
				el.bad = append(el.bad, sc.Text())
			} else {
				el.evs = append(el.evs, e)
			}
			el.mu.Unlock()
		}
	}()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-read; _ = cmd.Wait() })
	return el
}

// snapshot is what was read so far.
func (el *eventLog) snapshot() (evs []events.Event, bad []string) {
	el.mu.Lock()
	defer el.mu.Unlock()
	return append([]events.Event(nil), el.evs...), append([]string(nil), el.bad...)
}

// step is one event an expected sequence waits for.
type step struct {
	about string
	match func(events.Event) bool
}

func change(what, to string) step {
	return step{fmt.Sprintf("%s -> %s", what, to), func(e events.Event) bool {
		return e.Kind == events.KindChange && e.What == what && e.To == to
	}}
}

func resyncProgress(side string) step {
	return step{"resync progress (" + side + ")", func(e events.Event) bool {
		return e.Kind == events.KindResync && e.Resync != nil && e.Resync.Side == side && e.Resync.TotalBlocks > 0
	}}
}

// waitSequence waits until el holds steps in order (other events may
// come between them).
func (el *eventLog) waitSequence(t *testing.T, host string, limit time.Duration, steps ...step) {
	t.Helper()
	var missing string
	ok := poll.Wait(limit, func() bool {
		evs, _ := el.snapshot()
		i := 0
		for _, e := range evs {
			if i < len(steps) && steps[i].match(e) {
				i++
			}
		}
		if i == len(steps) {
			return true
		}
		missing = steps[i].about
		return false
	})
	if !ok {
		evs, bad := el.snapshot()
		var b strings.Builder
		for _, e := range evs {
			j, _ := json.Marshal(e)
			b.Write(append(j, '\n'))
		}
		t.Fatalf("%s's events lack %q (in order) after %v; bad lines %q; events:\n%s", host, missing, limit, bad, b.String())
	}
}

// TestEventsAndWatch: `events r0 --now` prints the state as JSON and
// exits; a followed stream shows a disconnect and the resync after it,
// on the primary as the resync's source and on the secondary as its
// target; `status r0 --watch` on a pseudo-terminal draws the target's
// progress bar, and into a pipe prints a line per change.
func TestEventsAndWatch(t *testing.T) {
	requireE2E(t, "nsenter")
	if err := netns.Available(); err != nil {
		t.Skip(err)
	}
	rl := newResourceLab(t, "128MiB", "")
	rl.start()

	now := strings.Split(strings.TrimSpace(rl.cli("a", "events", resourceName, "--now")), "\n")
	var first events.Event
	if err := json.Unmarshal([]byte(now[0]), &first); err != nil {
		t.Fatalf("events --now: %v: %q", err, now[0])
	}
	if len(now) != 1 || first.Kind != events.KindExists || first.Node != "a" || first.State == nil ||
		first.State.Role != "primary" || first.State.Link != string(node.LinkConnected) || first.State.PeerDisk != "uptodate" {
		t.Fatalf("events --now printed %q; want one exists event of a connected primary", now)
	}

	// A resync slow enough to be seen: 8 MiB/s, applied with adjust.
	rl.editResource("a", func(s string) string { return strings.Replace(s, `rate = "0"`, `rate = "8MiB"`, 1) })
	if out := rl.cli("a", "adjust", resourceName); !strings.Contains(out, "resync-rate") {
		t.Fatalf("adjust printed %q; want the resync rate applied", out)
	}
	onA := rl.followEvents("a", "--progress", "300ms")
	onB := rl.followEvents("b", "--progress", "300ms")
	watch := rl.watchOnPTY(t, "b")
	piped := &ptyOutput{} // the same command with a pipe as stdout
	plain := rl.command("a", "status", resourceName, "--watch", "--interval", "200ms")
	plain.Stdout = piped
	if err := plain.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = plain.Process.Kill(); _ = plain.Wait() })
	onA.waitSequence(t, "a", 10*time.Second, step{"exists", func(e events.Event) bool { return e.Kind == events.KindExists }})

	rl.lab.BlockPort("a", "b", 7789)
	poll.Until(t, 20*time.Second, "a to log writes for b", func() bool {
		st, err := status(rl.dir("a"))
		return err == nil && st.Replication == mirror.StateLogging
	})
	if err := writeSync(filepath.Join(rl.dir("a"), volume.ExportDir, "volume"), bytes.Repeat([]byte{7}, 16<<20)); err != nil {
		t.Fatal(err)
	}
	rl.lab.UnblockPort("a", "b", 7789)
	rl.waitServing("a", "b")

	// The link's return and the resync's start come in either order: the
	// resync may begin (a staging request to the target) before the
	// status samples the link as connected.
	onA.waitSequence(t, "a", 10*time.Second,
		change(events.WhatLink, string(node.LinkDisconnected)),
		change(events.WhatLink, string(node.LinkConnected)))
	onA.waitSequence(t, "a", 10*time.Second,
		change(events.WhatLink, string(node.LinkDisconnected)),
		change(events.WhatReplication, string(mirror.StateLogging)),
		change(events.WhatReplication, string(mirror.StateResyncing)),
		resyncProgress("source"),
		change(events.WhatReplication, string(mirror.StateReplicating)),
		change(events.WhatPeerDisk, "uptodate"))
	onB.waitSequence(t, "b", 10*time.Second,
		change(events.WhatReplication, string(node.ReplicationResyncTarget)),
		resyncProgress("target"),
		change(events.WhatReplication, string(mirror.StateReplicating)))
	for host, el := range map[string]*eventLog{"a": onA, "b": onB} {
		if _, bad := el.snapshot(); len(bad) > 0 {
			t.Errorf("%s: events printed lines that are not JSON events: %q", host, bad)
		}
	}
	// Piped: one line per change of the summary, no terminal codes.
	lines := piped.text()
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^\d\d:\d\d:\d\d a primary, connected to b, replicating \(sync\), disk uptodate, peer uptodate`),
		regexp.MustCompile(`(?m)^\d\d:\d\d:\d\d a primary, disconnected, logging`),
		regexp.MustCompile(`(?m)^\d\d:\d\d:\d\d a primary, connected to b, resyncing \d+\.\d%`),
	} {
		if !want.MatchString(lines) {
			t.Errorf("status --watch into a pipe lacks a line like %s:\n%s", want, lines)
		}
	}
	if strings.Contains(lines, "\x1b") {
		t.Errorf("status --watch into a pipe wrote terminal codes:\n%q", lines)
	}
	screen := watch.text()
	for _, want := range []string{"ldmirror status, every 200ms", "resync target [#", "resync-target", "node         b (secondary)"} {
		if !strings.Contains(screen, want) {
			t.Errorf("status --watch on a terminal lacks %q:\n%s", want, screen)
		}
	}
}

// ptyOutput is what a command wrote to its pseudo-terminal (or pipe).
type ptyOutput struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (p *ptyOutput) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.buf.Write(b)
}

func (p *ptyOutput) text() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.buf.String()
}

// watchOnPTY runs `ldmirror status r0 --watch` on host with a pseudo-
// terminal as its stdout, as an operator's terminal; the test's cleanup
// ends it.
func (rl *resourceLab) watchOnPTY(t *testing.T, host string) *ptyOutput {
	t.Helper()
	cmd := rl.command(host, "status", resourceName, "--watch", "--interval", "200ms")
	ptmx, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 40, Cols: 100})
	if err != nil {
		t.Fatal(err)
	}
	out := &ptyOutput{}
	read := make(chan struct{})
	go func() {
		defer close(read)
		buf := make([]byte, 4096)
		for {
			n, err := ptmx.Read(buf)
			out.mu.Lock()
			out.buf.Write(buf[:n])
			out.mu.Unlock()
			if err != nil { // EIO once the command exits
				return
			}
		}
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		ptmx.Close()
		<-read
	})
	return out
}
