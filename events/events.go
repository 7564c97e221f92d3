package events

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/ldapagent/agent"
	"github.com/ldmirror/ldmirror/mirror"
	"github.com/ldmirror/ldmirror/node"
)

// Event kinds, the "event" field.
const (
	// KindExists is the state when a stream starts.
	KindExists = "exists"
	// KindChange: What changed From one value To another.
	KindChange = "change"
	// KindResync is a running resync's progress, on its source and its
	// target alike.
	KindResync = "resync"
	// KindFailover and KindSwap: the LDAP agent moved the primary role
	// (RoleChange says from where to where, and why).
	KindFailover = "failover"
	KindSwap     = "swap"
	// KindHook: the LDAP agent ran a promote or demote hook.
	KindHook = "hook"
	// KindSplitBrain: the hosts both wrote since they last agreed; Error
	// says how to resolve it.
	KindSplitBrain = "split-brain"
	// KindStopping ends a stream: the daemon stops.
	KindStopping = "stopping"
)

// What changed, in a KindChange event.
const (
	WhatRole        = "role"
	WhatEpoch       = "epoch"
	WhatPrimary     = "primary"
	WhatLink        = "link"
	WhatReplication = "replication"
	WhatDisk        = "disk"
	WhatPeerDisk    = "peer_disk"
	WhatTransition  = "transition"
	// WhatResyncTarget and WhatPeerStage: what a resync's target says of
	// its staged resync, and what its source says of it
	// (docs/operations.md, "The source died during a resync").
	WhatResyncTarget = "resync_target"
	WhatPeerStage    = "peer_stage"
)

// Event is one line of `ldmirror events`.
type Event struct {
	Time time.Time `json:"time"`
	Node string    `json:"node"`
	Kind string    `json:"event"`
	// KindChange.
	What string `json:"what,omitempty"`
	From string `json:"from,omitempty"`
	To   string `json:"to,omitempty"`

	State      *State            `json:"state,omitempty"`
	Resync     *Resync           `json:"resync,omitempty"`
	Hook       *agent.HookResult `json:"hook,omitempty"`
	RoleChange *agent.RoleChange `json:"role_change,omitempty"`
	Error      string            `json:"error,omitempty"`
}

// State is a host's state in a KindExists event.
type State struct {
	Role        string  `json:"role"`
	Link        string  `json:"link"`
	Replication string  `json:"replication"`
	Disk        string  `json:"disk"`
	PeerDisk    string  `json:"peer_disk,omitempty"`
	Epoch       uint64  `json:"epoch,omitempty"`
	Primary     string  `json:"primary,omitempty"`
	Transition  string  `json:"transition,omitempty"`
	Resync      *Resync `json:"resync,omitempty"`
	// ResyncTarget and PeerStage are status's, without the apply's
	// progress, which is not a change of state.
	ResyncTarget string `json:"resync_target,omitempty"`
	PeerStage    string `json:"peer_stage,omitempty"`
}

// Resync is a running resync as one of its two hosts sees it.
type Resync struct {
	// Side is "source" (the primary, which copies) or "target".
	Side               string  `json:"side"`
	DoneBlocks         uint64  `json:"done_blocks"`
	TotalBlocks        uint64  `json:"total_blocks"`
	Percent            float64 `json:"percent"`
	RateBytesPerSecond float64 `json:"rate_bytes_per_second"`
	ETASeconds         float64 `json:"eta_seconds"`
}

// StateOf is st as a KindExists event shows it.
func StateOf(st node.Status) State {
	return State{
		Role: string(st.Role), Link: string(st.Link), Replication: string(st.Replication),
		Disk: string(st.Disk), PeerDisk: string(st.PeerDisk), Epoch: st.Epoch, Primary: st.NamedPrimary,
		Transition: st.Transition, Resync: ResyncOf(st),
		ResyncTarget: withoutApplyProgress(st.ResyncTarget), PeerStage: withoutApplyProgress(st.PeerStage),
	}
}

// applying starts a staged resync's state while it is being applied;
// the blocks applied so far follow.
const applying = "applying the completed resync"

func withoutApplyProgress(s string) string {
	if strings.HasPrefix(s, applying) {
		return applying
	}
	return s
}

// ResyncOf is st's running resync, or nil.
func ResyncOf(st node.Status) *Resync {
	side := ""
	switch st.Replication {
	case mirror.StateResyncing:
		side = "source"
	case node.ReplicationResyncTarget:
		side = "target"
	}
	if side == "" || st.ResyncTotal == 0 {
		return nil
	}
	return &Resync{
		Side: side, DoneBlocks: st.ResyncDone, TotalBlocks: st.ResyncTotal,
		Percent:            100 * float64(st.ResyncDone) / float64(st.ResyncTotal),
		RateBytesPerSecond: st.ResyncRate, ETASeconds: st.ResyncETASec,
	}
}

// splitBrainPrefix starts the error a split brain leaves in status
// (node.Node's splitBrain).
const splitBrainPrefix = "split brain"

// Diff is the events from one status of a host to the next, at now: the
// changes in the order of State's fields, then a split brain, then the
// agent's failovers, swaps and hooks.
func Diff(prev, cur node.Status, now time.Time) []Event {
	var evs []Event
	ev := func(e Event) {
		e.Time, e.Node = now, cur.Node
		evs = append(evs, e)
	}
	change := func(what, from, to string) {
		if from != to {
			ev(Event{Kind: KindChange, What: what, From: from, To: to})
		}
	}
	p, c := StateOf(prev), StateOf(cur)
	change(WhatRole, p.Role, c.Role)
	if p.Epoch != c.Epoch {
		change(WhatEpoch, itoa(p.Epoch), itoa(c.Epoch))
	}
	change(WhatPrimary, p.Primary, c.Primary)
	change(WhatLink, p.Link, c.Link)
	change(WhatReplication, p.Replication, c.Replication)
	if p.Disk != c.Disk {
		e := Event{Kind: KindChange, What: WhatDisk, From: p.Disk, To: c.Disk}
		if cur.Disk == cluster.DiskFailed {
			e.Error = cur.LastError // the I/O error that took the disk out
		}
		ev(e)
	}
	change(WhatPeerDisk, p.PeerDisk, c.PeerDisk)
	change(WhatTransition, p.Transition, c.Transition)
	change(WhatResyncTarget, p.ResyncTarget, c.ResyncTarget)
	change(WhatPeerStage, p.PeerStage, c.PeerStage)
	if strings.HasPrefix(cur.LastError, splitBrainPrefix) && cur.LastError != prev.LastError {
		ev(Event{Kind: KindSplitBrain, Error: cur.LastError})
	}
	pa, ca := prev.Agent, cur.Agent
	if ca == nil {
		return evs
	}
	if pa == nil {
		pa = &agent.Status{}
	}
	// A failover or swap the agent attempted, done or refused (Error).
	if newer(ca.LastFailover, pa.LastFailover) {
		ev(Event{Kind: KindFailover, RoleChange: ca.LastFailover})
	}
	if newer(ca.LastSwap, pa.LastSwap) {
		ev(Event{Kind: KindSwap, RoleChange: ca.LastSwap})
	}
	seen := map[hookKey]bool{}
	for _, h := range pa.LastHooks {
		seen[keyOf(h)] = true
	}
	for _, h := range ca.LastHooks {
		if !seen[keyOf(h)] {
			ev(Event{Kind: KindHook, Hook: &h})
		}
	}
	return evs
}

func newer(cur, prev *agent.RoleChange) bool {
	return cur != nil && (prev == nil || !cur.At.Equal(prev.At))
}

type hookKey struct {
	seq, name string
	started   time.Time
}

func keyOf(h agent.HookResult) hookKey { return hookKey{h.Sequence, h.Name, h.Started} }

func itoa(e uint64) string { return strconv.FormatUint(e, 10) }

// DefaultPoll is how often a Feed compares the host's status, and
// DefaultProgress how often it reports a running resync.
const (
	DefaultPoll     = 100 * time.Millisecond
	DefaultProgress = 2 * time.Second
)

// ErrClosed ends the streams of a Feed that was closed.
var ErrClosed = errors.New("the daemon stops")

// Feed follows one data host's status for any number of streams. Each
// stream runs in its caller's goroutine (Follow); Close ends them all and
// waits for them.
type Feed struct {
	status func() node.Status
	poll   time.Duration

	mu     sync.Mutex
	closed bool
	done   chan struct{}
	wg     sync.WaitGroup
}

// NewFeed follows the status that status returns, comparing it every poll
// (≤ 0: DefaultPoll).
func NewFeed(status func() node.Status, poll time.Duration) *Feed {
	if poll <= 0 {
		poll = DefaultPoll
	}
	return &Feed{status: status, poll: poll, done: make(chan struct{})}
}

// Follow passes emit the host's state as one KindExists event and then,
// unless now, one event per change and a KindResync event every progress
// (≤ 0: DefaultProgress) while a resync runs, until ctx ends (nil), emit
// fails (its error) or the feed closes (a KindStopping event, then
// ErrClosed).
func (f *Feed) Follow(ctx context.Context, now bool, progress time.Duration, emit func(Event) error) error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return ErrClosed
	}
	f.wg.Add(1)
	f.mu.Unlock()
	defer f.wg.Done()
	if progress <= 0 {
		progress = DefaultProgress
	}
	prev := f.status()
	st := StateOf(prev)
	if err := emit(Event{Time: time.Now(), Node: prev.Node, Kind: KindExists, State: &st}); err != nil || now {
		return err
	}
	lastProgress := time.Now()
	t := time.NewTicker(f.poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-f.done:
			_ = emit(Event{Time: time.Now(), Node: prev.Node, Kind: KindStopping})
			return ErrClosed
		case <-t.C:
		}
		cur := f.status()
		at := time.Now()
		evs := Diff(prev, cur, at)
		if r := ResyncOf(cur); r != nil && (at.Sub(lastProgress) >= progress || ResyncOf(prev) == nil) {
			evs = append(evs, Event{Time: at, Node: cur.Node, Kind: KindResync, Resync: r})
			lastProgress = at
		}
		for _, e := range evs {
			if err := emit(e); err != nil {
				return err
			}
		}
		prev = cur
	}
}

// Close ends every stream and waits for them.
func (f *Feed) Close() {
	f.mu.Lock()
	if !f.closed {
		f.closed = true
		close(f.done)
	}
	f.mu.Unlock()
	f.wg.Wait()
}
