package node

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/internal/poll"
	"github.com/ldmirror/ldmirror/volume"

	"github.com/google/uuid"
	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/internal/logbuf"
)

// These tests run a host against fakeCP after a restart: its own copy of
// the control plane is an old snapshot (b primary in epoch 2, index 15)
// and replays old states, while the leader is at epoch 11 (a primary,
// index 31). They need no root: a primary term fails to mount its export
// (MountDir is under a regular file), which is after the term started.

// follower is a host running with a fake control plane.
type follower struct {
	n    *Node
	cp   *fakeCP
	logs *logbuf.Buffer
}

// startFollower runs host id against cp until the test ends.
func startFollower(t *testing.T, id string, cp *fakeCP) *follower {
	t.Helper()
	dir := t.TempDir()
	if _, err := volume.Create(dir, 1<<20, 4096, uuid.Nil, false); err != nil {
		t.Fatal(err)
	}
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &logbuf.Buffer{}
	n, err := Open(Config{
		Dir: dir, NodeID: id, Listen: "127.0.0.1:0", Peer: "127.0.0.1:1", Secret: []byte("node-test-secret-0123456789"), InsecurePlaintext: true,
		MountDir: filepath.Join(notDir, "export"), ControlPlane: cp,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if t.Failed() {
			t.Logf("log of %s:\n%s", id, logs.String())
		}
	})
	return &follower{n: n, cp: cp, logs: logs}
}

var termLine = regexp.MustCompile(`msg="starting a term" role=(\w+) epoch=(\d+)`)

// terms lists the terms the host started, as "role@epoch".
func (f *follower) terms() []string {
	var out []string
	for _, m := range termLine.FindAllStringSubmatch(f.logs.String(), -1) {
		out = append(out, m[1]+"@"+m[2])
	}
	return out
}

// lines counts the log lines that contain s.
func (f *follower) lines(s string) int {
	return strings.Count(f.logs.String(), s)
}

// waitSecondary waits until the host runs its first secondary term and
// watches the control plane (the role watcher and the stale-primary
// watcher), so that every state applied from now on reaches it.
func (f *follower) waitSecondary(t *testing.T) {
	t.Helper()
	poll.Until(t, 10*time.Second, "the secondary term", func() bool {
		if terms := f.terms(); len(terms) > 1 {
			t.Fatalf("terms %v before any promotion; want one secondary term", terms)
		}
		return f.lines(`msg="secondary ready"`) == 1 && f.cp.watching() == 2
	})
}

// TestReplayedStatesIgnored: after a restart, the states b's copy replays
// (older than the state the leader confirmed at start) neither end b's
// secondary term nor start a primary term, and are not even sent to the
// leader to check; the promotion that follows, confirmed by the leader,
// ends the secondary term once and starts the primary term of its epoch.
func TestReplayedStatesIgnored(t *testing.T) {
	snapshot, confirmed := stateOf("b", 2, 15), stateOf("a", 11, 31)
	for _, tc := range []struct {
		name   string
		local  cluster.VolumeState   // b's copy at start
		replay []cluster.VolumeState // then applied to it
	}{
		{"the snapshot names this host primary", snapshot, nil},
		{"the log replays epochs in which this host was primary", snapshot, []cluster.VolumeState{
			stateOf("b", 2, 16), stateOf("", 3, 17), stateOf("a", 4, 18), stateOf("b", 5, 19), stateOf("b", 5, 22),
			stateOf("a", 6, 23), stateOf("b", 10, 29), stateOf("a", 11, 31)}},
		{"the current epoch below the confirmed index", confirmed, []cluster.VolumeState{stateOf("b", 11, 30)}},
		{"an older epoch at a higher index", confirmed, []cluster.VolumeState{stateOf("b", 10, 40)}},
		{"a newer state that keeps the primary", confirmed, []cluster.VolumeState{stateOf("a", 11, 32)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := startFollower(t, "b", newFakeCP(tc.local, confirmed))
			f.waitSecondary(t)
			if st := f.n.Status(); st.Role != cluster.RoleSecondary || st.Epoch != 11 || st.NamedPrimary != "a" {
				t.Fatalf("b after its restart: %s, control plane epoch %d, primary %q; want secondary, epoch 11, a",
					st.Role, st.Epoch, st.NamedPrimary)
			}
			for _, s := range tc.replay {
				f.cp.apply(s)
			}
			// Two newer states that keep a primary: once every watcher has
			// taken the second, the node has handled all the states before
			// the first (watchControl hands each on before taking the next).
			f.cp.apply(stateOf("a", 11, 100))
			f.cp.apply(stateOf("a", 11, 101))
			poll.Until(t, 10*time.Second, "b to take every state", func() bool { return f.cp.drained() })
			reads, _ := f.cp.counts()
			if terms, n := f.terms(), f.lines("named primary: closing the session"); !slices.Equal(terms, []string{"secondary@11"}) || n > 0 || reads != 1 {
				t.Fatalf("after the replay: terms %v, %d secondary terms ended for a promotion, %d reads through the leader; "+
					"want the first secondary term only, and the one read at start", terms, n, reads)
			}
			f.cp.commit(stateOf("b", 12, 102))
			poll.Until(t, 10*time.Second, "a primary term", func() bool {
				return slices.ContainsFunc(f.terms(), func(s string) bool { return strings.HasPrefix(s, "primary") })
			})

			terms := f.terms()
			if len(terms) < 2 || terms[0] != "secondary@11" || slices.ContainsFunc(terms[1:], func(s string) bool { return s != "primary@12" }) {
				t.Fatalf("terms %v; want secondary@11, then primary@12 only", terms)
			}
			if n := f.lines("named primary: closing the session"); n != 1 {
				t.Errorf("b ended its secondary term %d times for a promotion; want once", n)
			}
			if reads, _ := f.cp.counts(); reads != 2 {
				t.Errorf("b read through the leader %d times; want 2 (at start, and to confirm the promotion)", reads)
			}
		})
	}
}

// TestConfirmWaitsForQuorum: without quorum a host does not act on what
// its copy says: at start it runs no term, and named primary it stays
// secondary; status says what it waits for, the log says it once, and it
// acts once quorum returns.
func TestConfirmWaitsForQuorum(t *testing.T) {
	for _, tc := range []struct {
		name    string
		atStart bool // quorum is lost before b starts, not before its promotion
		wait    string
		terms   []string // once quorum returns
	}{
		{"at start", true, "waiting for the control plane to confirm who is primary (no quorum)", []string{"secondary@11"}},
		{"promotion", false, "waiting for the control plane to confirm the promotion of this host (no quorum)", []string{"secondary@11", "primary@12"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cp := newFakeCP(stateOf("a", 11, 31), stateOf("a", 11, 31))
			var f *follower
			if tc.atStart {
				cp.setQuorum(false)
				f = startFollower(t, "b", cp)
			} else {
				f = startFollower(t, "b", cp)
				f.waitSecondary(t)
				cp.setQuorum(false)
				cp.commit(stateOf("b", 12, 33))
			}
			_, from := cp.counts()
			poll.Until(t, 10*time.Second, "status to say what b waits for, after 2 attempts", func() bool {
				_, attempts := cp.counts()
				return attempts >= from+2 && f.n.Status().Transition == tc.wait
			})
			if n := f.lines("waiting for the control plane to confirm"); n != 1 {
				t.Errorf("%d log lines say b waits for the control plane; want 1", n)
			}
			if terms := f.terms(); len(terms) != len(tc.terms)-1 || !slices.Equal(terms, tc.terms[:len(terms)]) {
				t.Fatalf("terms without quorum: %v; want %v", terms, tc.terms[:len(tc.terms)-1])
			}
			cp.setQuorum(true)
			poll.Until(t, 10*time.Second, fmt.Sprintf("terms %v", tc.terms), func() bool {
				terms := f.terms()
				return len(terms) >= len(tc.terms) && slices.Equal(terms[:len(tc.terms)], tc.terms)
			})
		})
	}
}

// TestLostRoleIgnoresReplayedStates: a primary's "lost the role" trigger
// fires on the state that demotes it, not on the older states its copy
// replays, in which it does not hold its epoch either.
func TestLostRoleIgnoresReplayedStates(t *testing.T) {
	cp := newFakeCP(stateOf("b", 2, 15), stateOf("a", 11, 31))
	n := &Node{cfg: Config{NodeID: "a", ControlPlane: cp}, log: slog.New(slog.DiscardHandler)}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if st, err := n.confirmState(ctx, "who is primary"); err != nil || !st.Holds("a", 11) {
		t.Fatalf("confirmed %+v, %v; want a primary in epoch 11", st, err)
	}
	var mu sync.Mutex
	var seen []string
	lost, stop := n.watchRole(ctx, func(s cluster.VolumeState) bool {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, fmt.Sprintf("%q@%d/%d", s.Primary, s.Epoch, s.Index))
		return !s.Holds("a", 11)
	}, "")
	defer stop()
	poll.Until(t, 10*time.Second, "the trigger to watch the control plane", func() bool { return cp.watching() == 1 })
	for _, s := range []cluster.VolumeState{stateOf("b", 2, 16), stateOf("", 3, 17), stateOf("a", 4, 18), stateOf("", 10, 29), stateOf("a", 11, 32)} {
		cp.apply(s)
	}
	cp.commit(stateOf("", 12, 33))
	select {
	case <-lost:
	case <-ctx.Done():
		t.Fatal("the demotion in epoch 12 did not end the primary's role")
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{`"a"@11/32`, `""@12/33`}; !slices.Equal(seen, want) {
		t.Fatalf("the trigger looked at %v; want only the states from the confirmed one on: %v", seen, want)
	}
}

// TestControlState: what the host acts on is its member's copy unless that
// is older than the confirmed state.
func TestControlState(t *testing.T) {
	confirmed := stateOf("a", 11, 31)
	for _, tc := range []struct {
		name  string
		local cluster.VolumeState
		want  cluster.VolumeState
	}{
		{"old snapshot", stateOf("b", 2, 15), confirmed},
		{"lower index", stateOf("b", 11, 30), confirmed},
		{"lower epoch", stateOf("b", 10, 40), confirmed},
		{"the confirmed state", confirmed, confirmed},
		{"newer", stateOf("b", 12, 33), stateOf("b", 12, 33)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := &Node{cfg: Config{ControlPlane: newFakeCP(tc.local, confirmed)}, confirmed: confirmed}
			if got := n.controlState(); got.Primary != tc.want.Primary || got.Epoch != tc.want.Epoch || got.Index != tc.want.Index {
				t.Fatalf("controlState = %q@%d/%d; want %q@%d/%d", got.Primary, got.Epoch, got.Index, tc.want.Primary, tc.want.Epoch, tc.want.Index)
			}
		})
	}
}
