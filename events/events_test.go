package events

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/ldapagent/agent"
	"github.com/ldmirror/ldmirror/mirror"
	"github.com/ldmirror/ldmirror/node"
)

func primary() node.Status {
	return node.Status{Node: "a", Role: cluster.RolePrimary, Link: node.LinkConnected, Replication: mirror.StateReplicating,
		Disk: cluster.DiskUpToDate, PeerDisk: cluster.DiskUpToDate, Epoch: 3, NamedPrimary: "a"}
}

// TestDiffDisconnectResync: a lost peer and its resync, as the primary
// sees them.
func TestDiffDisconnectResync(t *testing.T) {
	up := primary()
	lost := up
	lost.Link, lost.Replication, lost.PeerDisk = node.LinkDisconnected, mirror.StateLogging, cluster.DiskOutdated
	resyncing := lost
	resyncing.Link, resyncing.Replication, resyncing.ResyncTotal, resyncing.ResyncDone = node.LinkConnected, mirror.StateResyncing, 100, 25
	now := time.Unix(1, 0)
	var got []string
	for _, step := range [][2]node.Status{{up, lost}, {lost, resyncing}, {resyncing, up}} {
		for _, e := range Diff(step[0], step[1], now) {
			if e.Kind != KindChange || e.Node != "a" || !e.Time.Equal(now) {
				t.Fatalf("event %+v", e)
			}
			got = append(got, e.What+":"+e.From+">"+e.To)
		}
	}
	want := []string{
		"link:connected>disconnected", "replication:replicating>logging", "peer_disk:uptodate>outdated",
		"link:disconnected>connected", "replication:logging>resyncing",
		"replication:resyncing>replicating", "peer_disk:outdated>uptodate",
	}
	if len(got) != len(want) {
		t.Fatalf("events %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("events %q, want %q", got, want)
		}
	}
	if r := ResyncOf(resyncing); r == nil || r.Side != "source" || r.Percent != 25 {
		t.Fatalf("ResyncOf = %+v", r)
	}
	target := node.Status{Replication: node.ReplicationResyncTarget, ResyncTotal: 4, ResyncDone: 1}
	if r := ResyncOf(target); r == nil || r.Side != "target" || r.Percent != 25 {
		t.Fatalf("ResyncOf target = %+v", r)
	}
}

// TestDiffAgentAndSplitBrain: failovers, swaps and hooks come once each.
func TestDiffAgentAndSplitBrain(t *testing.T) {
	prev := primary()
	prev.Agent = &agent.Status{LastHooks: []agent.HookResult{{Sequence: "promote", Name: "attach", Started: time.Unix(5, 0)}}}
	cur := prev
	cur.LastError = "split brain: a and b both wrote since they last agreed"
	cur.Agent = &agent.Status{Failovers: 1, LastFailover: &agent.RoleChange{From: "b", To: "a"},
		LastHooks: []agent.HookResult{{Sequence: "promote", Name: "attach", Started: time.Unix(5, 0)}, {Sequence: "promote", Name: "mount", Started: time.Unix(6, 0)}}}
	evs := Diff(prev, cur, time.Unix(7, 0))
	var kinds []string
	for _, e := range evs {
		kinds = append(kinds, e.Kind)
	}
	if len(evs) != 3 || evs[0].Kind != KindSplitBrain || evs[1].Kind != KindFailover || evs[1].RoleChange.From != "b" ||
		evs[2].Kind != KindHook || evs[2].Hook.Name != "mount" {
		t.Fatalf("events %v: %+v", kinds, evs)
	}
	if again := Diff(cur, cur, time.Unix(8, 0)); len(again) != 0 {
		t.Fatalf("no change gave %+v", again)
	}
}

// TestDiffDiskFailed: a disk that failed is a disk event that carries
// the I/O error; its repair (attach-disk) another.
func TestDiffDiskFailed(t *testing.T) {
	up := primary()
	failed := up
	failed.Disk, failed.LastError = cluster.DiskFailed, "disk failed: write volume.img: input/output error"
	evs := Diff(up, failed, time.Unix(9, 0))
	if len(evs) != 1 || evs[0].What != WhatDisk || evs[0].From != "uptodate" || evs[0].To != "failed" || evs[0].Error != failed.LastError {
		t.Fatalf("failure gave %+v", evs)
	}
	back := failed
	back.Disk, back.LastError = cluster.DiskInconsistent, ""
	if evs := Diff(failed, back, time.Unix(10, 0)); len(evs) != 1 || evs[0].To != "inconsistent" || evs[0].Error != "" {
		t.Fatalf("repair gave %+v", evs)
	}
}

// TestDiffStagedResync: a resync's target reports its staged resync as
// it changes, not the apply's progress.
func TestDiffStagedResync(t *testing.T) {
	idle := node.Status{Node: "b", Role: cluster.RoleSecondary, Link: node.LinkConnected}
	staging := idle
	staging.ResyncTarget = "resyncing (target consistent: as of 2026-12-06T10:41:07Z)"
	evs := Diff(idle, staging, time.Unix(1, 0))
	if len(evs) != 1 || evs[0].What != WhatResyncTarget || evs[0].To != staging.ResyncTarget {
		t.Fatalf("staging gave %+v", evs)
	}
	lost := staging
	lost.Link, lost.ResyncTarget = node.LinkDisconnected, "outdated, consistent as of 2026-12-06T10:41:07Z (a resync from a is staged, 47.7 MiB: …)"
	if evs := Diff(staging, lost, time.Unix(2, 0)); len(evs) != 2 || evs[1].What != WhatResyncTarget || evs[1].To != lost.ResyncTarget {
		t.Fatalf("the source's loss gave %+v", evs)
	}
	a1, a2 := staging, staging
	a1.ResyncTarget, a2.ResyncTarget = "applying the completed resync: 10 of 900 blocks", "applying the completed resync: 500 of 900 blocks"
	if evs := Diff(staging, a1, time.Unix(3, 0)); len(evs) != 1 || evs[0].To != "applying the completed resync" {
		t.Fatalf("the commit gave %+v", evs)
	}
	if evs := Diff(a1, a2, time.Unix(4, 0)); len(evs) != 0 {
		t.Fatalf("the apply's progress gave %+v", evs)
	}
}

// fakeHost is a status that a test changes.
type fakeHost struct {
	mu sync.Mutex
	st node.Status
}

func (h *fakeHost) status() node.Status {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.st
}

func (h *fakeHost) set(f func(*node.Status)) {
	h.mu.Lock()
	defer h.mu.Unlock()
	f(&h.st)
}

// TestFollow: the state first, then the changes and resync progress; now
// stops after the state; Close ends a stream with a stopping event.
func TestFollow(t *testing.T) {
	h := &fakeHost{st: primary()}
	f := NewFeed(h.status, time.Millisecond)
	var evs []Event
	if err := f.Follow(context.Background(), true, 0, func(e Event) error { evs = append(evs, e); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 || evs[0].Kind != KindExists || evs[0].State.Role != "primary" || evs[0].State.Epoch != 3 {
		t.Fatalf("--now: %+v", evs)
	}
	got := make(chan Event, 100)
	done := make(chan error, 1)
	go func() {
		done <- f.Follow(context.Background(), false, time.Hour, func(e Event) error { got <- e; return nil })
	}()
	if e := <-got; e.Kind != KindExists {
		t.Fatalf("first event %+v", e)
	}
	h.set(func(s *node.Status) { s.Replication, s.ResyncTotal, s.ResyncDone = mirror.StateResyncing, 10, 1 })
	if e := <-got; e.What != WhatReplication || e.To != "resyncing" {
		t.Fatalf("event %+v, want the replication change", e)
	}
	if e := <-got; e.Kind != KindResync || e.Resync.Percent != 10 {
		t.Fatalf("event %+v, want the resync's first progress", e)
	}
	f.Close()
	if e := <-got; e.Kind != KindStopping {
		t.Fatalf("event %+v, want stopping", e)
	}
	if err := <-done; !errors.Is(err, ErrClosed) {
		t.Fatalf("Follow after Close: %v", err)
	}
	if err := f.Follow(context.Background(), true, 0, func(Event) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Fatalf("Follow of a closed feed: %v", err)
	}
}
