package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sync"

	"github.com/hashicorp/raft"
)

// snapshotVersion is the version of the snapshot encoding this code writes.
const snapshotVersion = 1

// maxSnapshot bounds what Restore reads: the state is a few hosts, so
// anything larger is not ours.
const maxSnapshot = 1 << 20

// applyResult is what fsm.Apply returns to the raft future on the member
// that submitted the command.
type applyResult struct {
	Epoch   Epoch
	Primary string
	Err     error
}

// fsm is the raft.FSM over one VolumeState. Apply is called by raft's FSM
// goroutine only; State, Watch and Snapshot may run concurrently with it, so
// the state is guarded by mu.
type fsm struct {
	mu       sync.Mutex
	state    VolumeState
	watchers map[*watcher]struct{}
	// advanced is closed and replaced whenever state.Index moves, including
	// by a refused command, which notifies no watcher: waitIndex waits on it.
	advanced chan struct{}
	closed   bool
}

type watcher struct {
	ch   chan VolumeState
	stop func() bool
}

func newFSM() *fsm {
	return &fsm{watchers: make(map[*watcher]struct{}), advanced: make(chan struct{})}
}

// advanceLocked wakes the callers of waitIndex after state.Index moved.
func (f *fsm) advanceLocked() {
	close(f.advanced)
	f.advanced = make(chan struct{})
}

// Apply implements raft.FSM. A refused command still advances Index: the
// entry was applied, it just changed nothing.
func (f *fsm) Apply(l *raft.Log) any {
	c, err := decodeCommand(l.Data)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.state.Index = l.Index
	f.advanceLocked()
	if err != nil {
		return applyResult{Epoch: f.state.Epoch, Primary: f.state.Primary, Err: err}
	}
	e, err := f.state.apply(c, l.Index, l.AppendedAt)
	if err == nil {
		f.notifyLocked()
	}
	return applyResult{Epoch: e, Primary: f.state.Primary, Err: err}
}

type snapshotFile struct {
	Version int         `json:"version"`
	State   VolumeState `json:"state"`
}

// Snapshot implements raft.FSM. The state is tiny, so it is encoded here,
// under the lock, and Persist only writes bytes.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, err := json.Marshal(snapshotFile{Version: snapshotVersion, State: f.state})
	if err != nil {
		return nil, err
	}
	return fsmSnapshot(b), nil
}

// Restore implements raft.FSM: it replaces the whole state.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, maxSnapshot+1))
	if err != nil {
		return fmt.Errorf("read snapshot: %w", err)
	}
	s, err := decodeSnapshot(b)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.state = s
	f.advanceLocked()
	f.notifyLocked()
	return nil
}

func decodeSnapshot(b []byte) (VolumeState, error) {
	if len(b) > maxSnapshot {
		return VolumeState{}, fmt.Errorf("%w: snapshot larger than %d bytes", ErrCorruptStore, maxSnapshot)
	}
	var sf snapshotFile
	if err := json.Unmarshal(b, &sf); err != nil {
		return VolumeState{}, fmt.Errorf("%w: snapshot: %v", ErrCorruptStore, err)
	}
	if sf.Version != snapshotVersion {
		return VolumeState{}, fmt.Errorf("%w: snapshot version %d, this member reads %d", ErrCorruptStore, sf.Version, snapshotVersion)
	}
	return sf.State, nil
}

type fsmSnapshot []byte

func (s fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := sink.Write(s); err != nil {
		_ = sink.Cancel()
		return err
	}
	return sink.Close()
}

func (fsmSnapshot) Release() {}

// current returns a copy of the state.
func (f *fsm) current() VolumeState {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state.clone()
}

// waitIndex returns a copy of the state once it has applied the entry at
// index (or a later one). It returns ctx's error, or ErrClosed, if that
// does not happen first.
func (f *fsm) waitIndex(ctx context.Context, index uint64) (VolumeState, error) {
	for {
		f.mu.Lock()
		s, closed, advanced := f.state.clone(), f.closed, f.advanced
		f.mu.Unlock()
		switch {
		case s.Index >= index:
			return s, nil
		case closed:
			return VolumeState{}, ErrClosed
		}
		select {
		case <-advanced:
		case <-ctx.Done():
			return s, ctx.Err()
		}
	}
}

// watch returns a channel that holds the newest state: the current one at
// once, then each change. A slow reader sees only the latest state, never a
// backlog, which is what a fencing check wants. The channel closes when ctx
// ends or the fsm closes.
func (f *fsm) watch(ctx context.Context) <-chan VolumeState {
	ch := make(chan VolumeState, 1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		close(ch)
		return ch
	}
	ch <- f.state.clone()
	w := &watcher{ch: ch}
	f.watchers[w] = struct{}{}
	w.stop = context.AfterFunc(ctx, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		if _, ok := f.watchers[w]; ok {
			delete(f.watchers, w)
			close(w.ch)
		}
	})
	return ch
}

// notifyLocked replaces whatever a watcher has not read yet with the current
// state. It is the only sender and holds mu, so after draining the send
// cannot block.
func (f *fsm) notifyLocked() {
	for w := range f.watchers {
		s := f.state.clone()
		select {
		case w.ch <- s:
		default:
			select {
			case <-w.ch:
			default:
			}
			w.ch <- s
		}
	}
}

func (f *fsm) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	f.advanceLocked()
	for w := range f.watchers {
		w.stop()
		delete(f.watchers, w)
		close(w.ch)
	}
}
