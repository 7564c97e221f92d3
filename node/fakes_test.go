package node

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/ldmirror/ldmirror/cluster"
)

// fakeCP is a control plane whose member's own copy (State, Watch) and the
// leader's answer (Consistent) the test sets apart, as after a restart: the
// copy replays old states while the leader is far ahead. Unlike the
// cluster's Watch it delivers every state, in order, so that a state the
// node skips was skipped by the node, not coalesced away.
type fakeCP struct {
	mu       sync.Mutex
	local    cluster.VolumeState // this member's copy
	leader   cluster.VolumeState // what Consistent answers
	noQuorum bool                // Consistent fails with ErrNoQuorum
	reads    int                 // Consistent calls that answered
	attempts int                 // every Consistent call
	watchers map[chan cluster.VolumeState]struct{}

	// The commits a data host makes, answered from these and recorded.
	outdate  []error  // MarkPeerOutdated answers these in turn, then nil
	commits  []string // "outdated b@5", "uptodate b@5", "transfer a>b@5", ...
	transfer error    // TransferPrimary's answer; nil: the role moves
}

// stateOf is the state of data hosts a and b, both uptodate, and witness w,
// with primary in epoch at raft index.
func stateOf(primary string, epoch cluster.Epoch, index uint64) cluster.VolumeState {
	return cluster.VolumeState{Primary: primary, Epoch: epoch, EpochIndex: index, Index: index, Hosts: []cluster.HostState{
		{ID: "a", Disk: cluster.DiskUpToDate},
		{ID: "b", Disk: cluster.DiskUpToDate},
		{ID: "w", Witness: true, Disk: cluster.DiskDiskless},
	}}
}

func newFakeCP(local, leader cluster.VolumeState) *fakeCP {
	return &fakeCP{local: local, leader: leader, watchers: map[chan cluster.VolumeState]struct{}{}}
}

func clone(s cluster.VolumeState) cluster.VolumeState {
	s.Hosts = slices.Clone(s.Hosts)
	return s
}

func (f *fakeCP) State() cluster.VolumeState {
	f.mu.Lock()
	defer f.mu.Unlock()
	return clone(f.local)
}

func (f *fakeCP) Consistent(ctx context.Context) (cluster.VolumeState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.attempts++
	if f.noQuorum {
		return cluster.VolumeState{}, fmt.Errorf("%w (fake)", cluster.ErrNoQuorum)
	}
	f.reads++
	return clone(f.leader), nil
}

func (f *fakeCP) Watch(ctx context.Context) <-chan cluster.VolumeState {
	ch := make(chan cluster.VolumeState, 64)
	f.mu.Lock()
	defer f.mu.Unlock()
	ch <- clone(f.local)
	f.watchers[ch] = struct{}{}
	context.AfterFunc(ctx, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		delete(f.watchers, ch)
		close(ch)
	})
	return ch
}

// apply makes s this member's copy, as its FSM applying an entry (or
// restoring a snapshot) would, and delivers it to every watcher.
func (f *fakeCP) apply(s cluster.VolumeState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.local = s
	for ch := range f.watchers {
		select {
		case ch <- clone(s):
		default:
			panic("fakeCP: a watcher has 64 states unread")
		}
	}
}

// commit is a change the leader confirms and this member applies.
func (f *fakeCP) commit(s cluster.VolumeState) {
	f.mu.Lock()
	f.leader = s
	f.mu.Unlock()
	f.apply(s)
}

// watching is the number of open Watch channels.
func (f *fakeCP) watching() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.watchers)
}

// drained reports whether every watcher has taken every state applied.
func (f *fakeCP) drained() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for ch := range f.watchers {
		if len(ch) > 0 {
			return false
		}
	}
	return true
}

func (f *fakeCP) setQuorum(ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.noQuorum = !ok
}

func (f *fakeCP) counts() (reads, attempts int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reads, f.attempts
}

func (f *fakeCP) MarkPeerOutdated(ctx context.Context, epoch cluster.Epoch, peer string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var err error
	if len(f.outdate) > 0 {
		err, f.outdate = f.outdate[0], f.outdate[1:]
	}
	if err == nil {
		f.commits = append(f.commits, fmt.Sprintf("outdated %s@%d", peer, epoch))
	}
	return err
}

func (f *fakeCP) SetDiskState(ctx context.Context, node string, d cluster.DiskState, epoch cluster.Epoch) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.commits = append(f.commits, fmt.Sprintf("%s %s@%d", d, node, epoch))
	return nil
}

func (f *fakeCP) TransferPrimary(ctx context.Context, from, to string, epoch cluster.Epoch) (cluster.Epoch, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.transfer != nil {
		return 0, f.transfer
	}
	f.commits = append(f.commits, fmt.Sprintf("transfer %s>%s@%d", from, to, epoch))
	return epoch + 1, nil
}

func (f *fakeCP) Failover(ctx context.Context, failed string, epoch cluster.Epoch) (string, cluster.Epoch, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	to := map[string]string{"a": "b", "b": "a"}[failed]
	f.commits = append(f.commits, fmt.Sprintf("failover %s>%s@%d", failed, to, epoch))
	return to, epoch + 1, nil
}

// committed lists the commits made so far.
func (f *fakeCP) committed() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.commits)
}

func (f *fakeCP) Leader() (id, addr string) { return "w", "127.0.0.1:1" }
