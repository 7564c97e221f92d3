package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// at is the append time every test entry carries, so results are exact.
var at = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

// pair is the usual starting point: data hosts a (primary) and b, both
// uptodate, witness w, epoch 3 begun at index 10.
func pair() VolumeState {
	return VolumeState{
		Primary: "a", Epoch: 3, EpochIndex: 10,
		Hosts: []HostState{
			{ID: "a", Disk: DiskUpToDate, DiskEpoch: 1},
			{ID: "b", Disk: DiskUpToDate, DiskEpoch: 1},
			{ID: "w", Witness: true, Disk: DiskDiskless},
		},
	}
}

// TestApply runs one command against a starting state and checks the exact
// resulting state, or that a refused command changed nothing.
func TestApply(t *testing.T) {
	const idx = 100
	noPrimary := func(s *VolumeState) { s.Primary = "" }
	bOutdated := func(s *VolumeState) { s.Hosts[1].Disk, s.Hosts[1].DiskEpoch = DiskOutdated, 3 }
	tests := []struct {
		name    string
		start   func(*VolumeState) // changes to pair(); nil for pair() itself
		cmd     command
		wantErr error
		want    func(*VolumeState) // changes to the start state; ignored on error
	}{
		// register
		{name: "register first data host in empty cluster", start: func(s *VolumeState) { *s = VolumeState{} },
			cmd: command{Op: opRegister, Node: "a"},
			want: func(s *VolumeState) {
				s.Hosts = []HostState{{ID: "a", Disk: DiskInconsistent}}
			}},
		{name: "register witness is diskless", start: func(s *VolumeState) { s.Hosts = s.Hosts[:2] },
			cmd: command{Op: opRegister, Node: "w", Witness: true},
			want: func(s *VolumeState) {
				s.Hosts = append(s.Hosts, HostState{ID: "w", Witness: true, Disk: DiskDiskless, DiskEpoch: 3})
			}},
		{name: "register keeps hosts sorted", start: func(s *VolumeState) { s.Hosts = []HostState{s.Hosts[0], s.Hosts[2]} },
			cmd: command{Op: opRegister, Node: "b"},
			want: func(s *VolumeState) {
				s.Hosts = []HostState{s.Hosts[0], {ID: "b", Disk: DiskInconsistent, DiskEpoch: 3}, s.Hosts[1]}
			}},
		{name: "register again is a no-op", cmd: command{Op: opRegister, Node: "b"}, want: func(*VolumeState) {}},
		{name: "register changing kind refused", cmd: command{Op: opRegister, Node: "b", Witness: true}, wantErr: ErrInvalidCommand},
		{name: "third data host refused", cmd: command{Op: opRegister, Node: "c"}, wantErr: ErrClusterFull},
		{name: "second witness accepted", cmd: command{Op: opRegister, Node: "x", Witness: true},
			want: func(s *VolumeState) {
				s.Hosts = append(s.Hosts, HostState{ID: "x", Witness: true, Disk: DiskDiskless, DiskEpoch: 3})
			}},
		{name: "empty node id refused", cmd: command{Op: opRegister, Node: ""}, wantErr: ErrInvalidCommand},
		{name: "node id with space refused", cmd: command{Op: opRegister, Node: "a b", Witness: true}, wantErr: ErrInvalidCommand},

		// remove
		{name: "remove secondary", cmd: command{Op: opRemove, Node: "b"},
			want: func(s *VolumeState) { s.Hosts = []HostState{s.Hosts[0], s.Hosts[2]} }},
		{name: "remove primary refused", cmd: command{Op: opRemove, Node: "a"}, wantErr: ErrIsPrimary},
		{name: "remove unknown is a no-op", cmd: command{Op: opRemove, Node: "zz"}, want: func(*VolumeState) {}},

		// promote
		{name: "promote with no primary keeps the peer uptodate", start: noPrimary, cmd: command{Op: opPromote, Node: "b"},
			want: func(s *VolumeState) { s.Primary, s.Epoch, s.EpochIndex = "b", 4, idx }},
		{name: "promote displaces primary and outdates it", cmd: command{Op: opPromote, Node: "b"},
			want: func(s *VolumeState) {
				s.Primary, s.Epoch, s.EpochIndex = "b", 4, idx
				s.Hosts[0].Disk, s.Hosts[0].DiskEpoch = DiskOutdated, 4
			}},
		{name: "promote current primary is a no-op", cmd: command{Op: opPromote, Node: "a"}, want: func(*VolumeState) {}},
		{name: "promote outdated refused", start: bOutdated, cmd: command{Op: opPromote, Node: "b"}, wantErr: ErrNotUpToDate},
		{name: "promote inconsistent refused", start: func(s *VolumeState) { s.Hosts[1].Disk = DiskInconsistent },
			cmd: command{Op: opPromote, Node: "b"}, wantErr: ErrNotUpToDate},
		{name: "forced promote of outdated needs a reason", start: bOutdated,
			cmd: command{Op: opPromote, Node: "b", Force: true}, wantErr: ErrInvalidCommand},
		{name: "forced promote of outdated is recorded", start: bOutdated,
			cmd: command{Op: opPromote, Node: "b", Force: true, Reason: "A lost"},
			want: func(s *VolumeState) {
				s.Primary, s.Epoch, s.EpochIndex = "b", 4, idx
				s.Hosts[0].Disk, s.Hosts[0].DiskEpoch = DiskOutdated, 4
				s.Hosts[1].Disk, s.Hosts[1].DiskEpoch = DiskUpToDate, 4
				s.ForcedPromotions = 1
				s.LastForced = ForcedPromotion{Node: "b", Reason: "A lost", Disk: DiskOutdated, Epoch: 4, Index: idx, At: at}
			}},
		{name: "forced promote of uptodate is not counted", start: noPrimary,
			cmd:  command{Op: opPromote, Node: "b", Force: true, Reason: "habit"},
			want: func(s *VolumeState) { s.Primary, s.Epoch, s.EpochIndex = "b", 4, idx }},
		{name: "forced promote with no primary outdates the peer", start: func(s *VolumeState) { noPrimary(s); s.Hosts[1].Disk = DiskOutdated },
			cmd: command{Op: opPromote, Node: "b", Force: true, Reason: "a is gone"},
			want: func(s *VolumeState) {
				s.Primary, s.Epoch, s.EpochIndex = "b", 4, idx
				s.Hosts[0].Disk, s.Hosts[0].DiskEpoch = DiskOutdated, 4
				s.Hosts[1].Disk, s.Hosts[1].DiskEpoch = DiskUpToDate, 4
				s.ForcedPromotions = 1
				s.LastForced = ForcedPromotion{Node: "b", Reason: "a is gone", Disk: DiskOutdated, Epoch: 4, Index: idx, At: at}
			}},
		{name: "promote witness refused even forced", cmd: command{Op: opPromote, Node: "w", Force: true, Reason: "x"}, wantErr: ErrWitness},
		{name: "promote unknown refused", cmd: command{Op: opPromote, Node: "zz"}, wantErr: ErrUnknownNode},

		// demote
		{name: "demote primary", cmd: command{Op: opDemote, Node: "a", Epoch: 3},
			want: func(s *VolumeState) { s.Primary, s.Epoch, s.EpochIndex = "", 4, idx }},
		{name: "demote with stale epoch refused", cmd: command{Op: opDemote, Node: "a", Epoch: 2}, wantErr: ErrStaleEpoch},
		{name: "demote secondary refused", cmd: command{Op: opDemote, Node: "b", Epoch: 3}, wantErr: ErrNotPrimary},
		{name: "demote with no primary refused", start: noPrimary, cmd: command{Op: opDemote, Node: "a", Epoch: 3}, wantErr: ErrNotPrimary},

		// transfer (swap)
		{name: "transfer keeps both uptodate", cmd: command{Op: opTransfer, By: "a", Node: "b", Epoch: 3},
			want: func(s *VolumeState) { s.Primary, s.Epoch, s.EpochIndex = "b", 4, idx }},
		{name: "transfer to outdated refused", start: bOutdated, cmd: command{Op: opTransfer, By: "a", Node: "b", Epoch: 3}, wantErr: ErrNotUpToDate},
		{name: "transfer from non-primary refused", cmd: command{Op: opTransfer, By: "b", Node: "a", Epoch: 3}, wantErr: ErrNotPrimary},
		{name: "transfer with stale epoch refused", cmd: command{Op: opTransfer, By: "a", Node: "b", Epoch: 1}, wantErr: ErrStaleEpoch},
		{name: "transfer to witness refused", cmd: command{Op: opTransfer, By: "a", Node: "w", Epoch: 3}, wantErr: ErrWitness},
		{name: "transfer to self refused", cmd: command{Op: opTransfer, By: "a", Node: "a", Epoch: 3}, wantErr: ErrInvalidCommand},

		// failover (agent hook)
		{name: "failover moves to the uptodate host", cmd: command{Op: opFailover, By: "a", Epoch: 3},
			want: func(s *VolumeState) {
				s.Primary, s.Epoch, s.EpochIndex = "b", 4, idx
				s.Hosts[0].Disk, s.Hosts[0].DiskEpoch = DiskOutdated, 4
			}},
		{name: "failover with no primary picks the lowest uptodate id", start: noPrimary, cmd: command{Op: opFailover, Epoch: 3},
			want: func(s *VolumeState) { s.Primary, s.Epoch, s.EpochIndex = "a", 4, idx }},
		{name: "failover to outdated refused", start: bOutdated, cmd: command{Op: opFailover, By: "a", Epoch: 3}, wantErr: ErrNotUpToDate},
		{name: "second failover of same epoch refused", start: func(s *VolumeState) { s.Primary, s.Epoch = "b", 4 },
			cmd: command{Op: opFailover, By: "a", Epoch: 3}, wantErr: ErrStaleEpoch},
		{name: "failover naming wrong primary refused", cmd: command{Op: opFailover, By: "b", Epoch: 3}, wantErr: ErrNotPrimary},
		{name: "failover never picks the witness", start: func(s *VolumeState) { s.Hosts = []HostState{s.Hosts[0], s.Hosts[2]} },
			cmd: command{Op: opFailover, By: "a", Epoch: 3}, wantErr: ErrNotUpToDate},

		// mark outdated (fencing)
		{name: "primary outdates its peer", cmd: command{Op: opMarkOutdated, By: "a", Node: "b", Epoch: 3},
			want: bOutdated},
		{name: "mark outdated again is a no-op", start: bOutdated, cmd: command{Op: opMarkOutdated, By: "a", Node: "b", Epoch: 3},
			want: func(*VolumeState) {}},
		{name: "mark outdated keeps inconsistent", start: func(s *VolumeState) { s.Hosts[1].Disk = DiskInconsistent },
			cmd: command{Op: opMarkOutdated, By: "a", Node: "b", Epoch: 3}, want: func(*VolumeState) {}},
		{name: "mark outdated from deposed primary refused", start: func(s *VolumeState) { s.Primary, s.Epoch = "b", 4 },
			cmd: command{Op: opMarkOutdated, By: "a", Node: "b", Epoch: 3}, wantErr: ErrStaleEpoch},
		{name: "mark outdated from secondary refused", cmd: command{Op: opMarkOutdated, By: "b", Node: "a", Epoch: 3}, wantErr: ErrNotPrimary},
		{name: "primary cannot outdate itself", cmd: command{Op: opMarkOutdated, By: "a", Node: "a", Epoch: 3}, wantErr: ErrInvalidCommand},
		{name: "mark outdated of witness refused", cmd: command{Op: opMarkOutdated, By: "a", Node: "w", Epoch: 3}, wantErr: ErrWitness},
		{name: "mark outdated of unknown refused", cmd: command{Op: opMarkOutdated, By: "a", Node: "zz", Epoch: 3}, wantErr: ErrUnknownNode},

		// set disk
		{name: "resynced host becomes uptodate", start: bOutdated, cmd: command{Op: opSetDisk, Node: "b", Disk: DiskUpToDate, Epoch: 3},
			want: func(s *VolumeState) { s.Hosts[1].Disk = DiskUpToDate }},
		{name: "resync start marks inconsistent", cmd: command{Op: opSetDisk, Node: "b", Disk: DiskInconsistent, Epoch: 3},
			want: func(s *VolumeState) { s.Hosts[1].Disk, s.Hosts[1].DiskEpoch = DiskInconsistent, 3 }},
		{name: "set disk in stale epoch refused", start: bOutdated, cmd: command{Op: opSetDisk, Node: "b", Disk: DiskUpToDate, Epoch: 2}, wantErr: ErrStaleEpoch},
		{name: "primary disk cannot be outdated", cmd: command{Op: opSetDisk, Node: "a", Disk: DiskOutdated, Epoch: 3}, wantErr: ErrInvalidCommand},
		{name: "diskless is not a data state", cmd: command{Op: opSetDisk, Node: "b", Disk: DiskDiskless, Epoch: 3}, wantErr: ErrInvalidCommand},
		{name: "witness has no disk", cmd: command{Op: opSetDisk, Node: "w", Disk: DiskUpToDate, Epoch: 3}, wantErr: ErrWitness},

		// ack seq
		{name: "ack seq recorded", cmd: command{Op: opAckSeq, Node: "b", Seq: 42, Epoch: 3},
			want: func(s *VolumeState) { s.Hosts[1].AckedSeq, s.Hosts[1].AckedEpoch = 42, 3 }},
		{name: "older ack in same epoch ignored", start: func(s *VolumeState) { s.Hosts[1].AckedSeq, s.Hosts[1].AckedEpoch = 50, 3 },
			cmd: command{Op: opAckSeq, Node: "b", Seq: 42, Epoch: 3}, want: func(*VolumeState) {}},
		{name: "new epoch restarts acks", start: func(s *VolumeState) { s.Hosts[1].AckedSeq, s.Hosts[1].AckedEpoch = 50, 2 },
			cmd:  command{Op: opAckSeq, Node: "b", Seq: 7, Epoch: 3},
			want: func(s *VolumeState) { s.Hosts[1].AckedSeq, s.Hosts[1].AckedEpoch = 7, 3 }},
		{name: "ack in stale epoch refused", cmd: command{Op: opAckSeq, Node: "b", Seq: 1, Epoch: 2}, wantErr: ErrStaleEpoch},

		// report ready (agent readiness)
		{name: "first readiness report sets since from the entry", cmd: command{Op: opReportReady, Node: "b", Ready: true, Detail: "slaptest ok"},
			want: func(s *VolumeState) {
				s.Hosts[1].Ready, s.Hosts[1].ReadyDetail, s.Hosts[1].ReadySince = true, "slaptest ok", at
			}},
		{name: "first report of not ready also sets since", cmd: command{Op: opReportReady, Node: "a", Detail: "connect: refused"},
			want: func(s *VolumeState) { s.Hosts[0].ReadyDetail, s.Hosts[0].ReadySince = "connect: refused", at }},
		{name: "same readiness keeps since and updates detail", start: func(s *VolumeState) {
			s.Hosts[1].Ready, s.Hosts[1].ReadyDetail, s.Hosts[1].ReadySince = true, "old", at.Add(-time.Hour)
		},
			cmd:  command{Op: opReportReady, Node: "b", Ready: true, Detail: "new"},
			want: func(s *VolumeState) { s.Hosts[1].ReadyDetail = "new" }},
		{name: "change of readiness moves since", start: func(s *VolumeState) {
			s.Hosts[1].Ready, s.Hosts[1].ReadyDetail, s.Hosts[1].ReadySince = true, "ok", at.Add(-time.Hour)
		},
			cmd: command{Op: opReportReady, Node: "b", Detail: "ready_check failed"},
			want: func(s *VolumeState) {
				s.Hosts[1].Ready, s.Hosts[1].ReadyDetail, s.Hosts[1].ReadySince = false, "ready_check failed", at
			}},
		{name: "readiness needs no current epoch", cmd: command{Op: opReportReady, Node: "b", Ready: true, Epoch: 1},
			want: func(s *VolumeState) { s.Hosts[1].Ready, s.Hosts[1].ReadySince = true, at }},
		{name: "readiness of witness refused", cmd: command{Op: opReportReady, Node: "w", Ready: true}, wantErr: ErrWitness},
		{name: "readiness of unknown refused", cmd: command{Op: opReportReady, Node: "zz", Ready: true}, wantErr: ErrUnknownNode},
		{name: "readiness detail too long refused", cmd: command{Op: opReportReady, Node: "b", Detail: strings.Repeat("x", MaxReadyDetail+1)},
			wantErr: ErrInvalidCommand},

		{name: "unknown op refused", cmd: command{Op: "merge", Node: "a"}, wantErr: ErrInvalidCommand},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := pair()
			if tc.start != nil {
				tc.start(&s)
			}
			before := s.clone()
			epoch, err := s.apply(tc.cmd, idx, at)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				if !reflect.DeepEqual(s, before) {
					t.Fatalf("refused command changed the state:\n got %+v\nwant %+v", s, before)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			want := before.clone()
			tc.want(&want)
			if !reflect.DeepEqual(s, want) {
				t.Fatalf("state:\n got %+v\nwant %+v", s, want)
			}
			if epoch != want.Epoch {
				t.Fatalf("returned epoch %d, state epoch %d", epoch, want.Epoch)
			}
		})
	}
}

func mustEncode(t *testing.T, c command) []byte {
	t.Helper()
	b, err := c.encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// history is a full lifecycle: bootstrap, sync, promote, lose the peer,
// resync, swap, failover.
func history(t *testing.T) []*raft.Log {
	t.Helper()
	cmds := []command{
		{Op: opRegister, Node: "a"},
		{Op: opRegister, Node: "w", Witness: true},
		{Op: opRegister, Node: "b"},
		{Op: opSetDisk, Node: "a", Disk: DiskUpToDate},
		{Op: opPromote, Node: "a"},                               // epoch 1
		{Op: opSetDisk, Node: "b", Disk: DiskUpToDate, Epoch: 1}, //
		{Op: opAckSeq, Node: "b", Seq: 9, Epoch: 1},              //
		{Op: opMarkOutdated, By: "a", Node: "b", Epoch: 1},       //
		{Op: opPromote, Node: "b"},                               // refused: outdated
		{Op: opSetDisk, Node: "b", Disk: DiskUpToDate, Epoch: 1}, // resynced
		{Op: opTransfer, By: "a", Node: "b", Epoch: 1},           // epoch 2
		{Op: opFailover, By: "b", Epoch: 2},                      // epoch 3, b outdated
		{Op: opPromote, Node: "b", Force: true, Reason: "drill"}, // epoch 4, forced
		{Op: opDemote, Node: "b", Epoch: 4},                      // epoch 5
		{Op: opMarkOutdated, By: "b", Node: "a", Epoch: 4},       // refused: stale
		{Op: opSetDisk, Node: "a", Disk: DiskInconsistent, Epoch: 5},
		{Op: opReportReady, Node: "b", Ready: true, Detail: "slaptest ok"}, // b ready since this entry
		{Op: opReportReady, Node: "w", Ready: true},                        // refused: witness
		{Op: opReportReady, Node: "b", Ready: true, Detail: "still ok"},    // since unchanged
	}
	logs := make([]*raft.Log, len(cmds))
	for i, c := range cmds {
		logs[i] = &raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: mustEncode(t, c), AppendedAt: at.Add(time.Duration(i) * time.Second)}
	}
	return logs
}

// TestFSMHistory applies a lifecycle through raft's FSM interface and checks
// each verdict and the final state.
func TestFSMHistory(t *testing.T) {
	f := newFSM()
	logs := history(t)
	wantErr := map[uint64]error{9: ErrNotUpToDate, 15: ErrStaleEpoch, 18: ErrWitness}
	wantEpoch := []Epoch{0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 2, 3, 4, 5, 5, 5, 5, 5, 5}
	for i, l := range logs {
		r := f.Apply(l).(applyResult)
		if !errors.Is(r.Err, wantErr[l.Index]) || (wantErr[l.Index] == nil) != (r.Err == nil) {
			t.Fatalf("entry %d: err = %v, want %v", l.Index, r.Err, wantErr[l.Index])
		}
		if r.Epoch != wantEpoch[i] {
			t.Fatalf("entry %d: epoch %d, want %d", l.Index, r.Epoch, wantEpoch[i])
		}
	}
	want := VolumeState{
		Primary: "", Epoch: 5, EpochIndex: 14,
		Hosts: []HostState{
			{ID: "a", Disk: DiskInconsistent, DiskEpoch: 5},
			{ID: "b", Disk: DiskUpToDate, DiskEpoch: 4, AckedSeq: 9, AckedEpoch: 1,
				Ready: true, ReadyDetail: "still ok", ReadySince: at.Add(16 * time.Second)},
			{ID: "w", Witness: true, Disk: DiskDiskless},
		},
		ForcedPromotions: 1,
		LastForced:       ForcedPromotion{Node: "b", Reason: "drill", Disk: DiskOutdated, Epoch: 4, Index: 13, At: at.Add(12 * time.Second)},
		Index:            19,
	}
	if got := f.current(); !reflect.DeepEqual(got, want) {
		t.Fatalf("final state:\n got %+v\nwant %+v", got, want)
	}
}

// TestFSMBadEntries checks that undecodable entries are refused without a
// panic or a change, but still advance the applied index.
func TestFSMBadEntries(t *testing.T) {
	good := mustEncode(t, command{Op: opRegister, Node: "a"})
	tests := []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"future version", append([]byte{commandVersion + 1}, good[1:]...)},
		{"not json", []byte{commandVersion, '{', 'x'}},
		{"wrong field type", append([]byte{commandVersion}, `{"op":"register","node":7}`...)},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFSM()
			f.Apply(&raft.Log{Index: 1, Data: good})
			before := f.current()
			r := f.Apply(&raft.Log{Index: uint64(i + 2), Data: tc.data}).(applyResult)
			if !errors.Is(r.Err, ErrInvalidCommand) {
				t.Fatalf("err = %v, want ErrInvalidCommand", r.Err)
			}
			got := f.current()
			if got.Index != uint64(i+2) {
				t.Fatalf("index %d, want %d", got.Index, i+2)
			}
			got.Index = before.Index
			if !reflect.DeepEqual(got, before) {
				t.Fatalf("bad entry changed the state: %+v", got)
			}
		})
	}
}

// TestWatch checks that a watcher sees the current state at once, only the
// newest state when it lags, and a closed channel when its context ends.
func TestWatch(t *testing.T) {
	f := newFSM()
	ctx, cancel := context.WithCancel(context.Background())
	ch := f.watch(ctx)
	if s := <-ch; len(s.Hosts) != 0 {
		t.Fatalf("initial state %+v, want empty", s)
	}
	for i, c := range []command{{Op: opRegister, Node: "a"}, {Op: opSetDisk, Node: "a", Disk: DiskUpToDate}, {Op: opPromote, Node: "a"}} {
		f.Apply(&raft.Log{Index: uint64(i + 1), Data: mustEncode(t, c)})
	}
	if s := <-ch; s.Epoch != 1 || s.Primary != "a" {
		t.Fatalf("lagging watcher got %+v, want the newest state (epoch 1, primary a)", s)
	}
	select {
	case s := <-ch:
		t.Fatalf("watcher got a backlog entry %+v", s)
	default:
	}
	// A refused command is not a change.
	f.Apply(&raft.Log{Index: 4, Data: mustEncode(t, command{Op: opPromote, Node: "zz"})})
	select {
	case s := <-ch:
		t.Fatalf("refused command notified %+v", s)
	default:
	}
	cancel()
	if _, ok := <-ch; ok {
		t.Fatal("channel still open after cancel")
	}
	closed := f.watch(context.Background())
	<-closed
	f.close()
	if _, ok := <-closed; ok {
		t.Fatal("channel still open after fsm close")
	}
	if _, ok := <-f.watch(context.Background()); ok {
		t.Fatal("watch after close returned an open channel")
	}
}

// TestWaitIndex: waitIndex returns once the state has applied the entry
// asked for, woken by refused commands and restores too (they move Index
// without notifying watchers), and not before; it gives up when its context
// ends or the fsm closes.
func TestWaitIndex(t *testing.T) {
	f := newFSM()
	f.Apply(&raft.Log{Index: 1, Data: mustEncode(t, command{Op: opRegister, Node: "a"})})
	if s, err := f.waitIndex(context.Background(), 1); err != nil || s.Index != 1 {
		t.Fatalf("waitIndex(1) at index 1 = index %d, %v", s.Index, err)
	}
	type result struct {
		s   VolumeState
		err error
	}
	wait := func(ctx context.Context, index uint64) <-chan result {
		ch := make(chan result, 1)
		go func() {
			s, err := f.waitIndex(ctx, index)
			ch <- result{s, err}
		}()
		return ch
	}
	got := wait(context.Background(), 3)
	refused := mustEncode(t, command{Op: opPromote, Node: "zz"})
	f.Apply(&raft.Log{Index: 2, Data: refused})
	f.Apply(&raft.Log{Index: 3, Data: refused})
	if r := <-got; r.err != nil || r.s.Index != 3 {
		t.Fatalf("waitIndex(3) = index %d, %v; want index 3", r.s.Index, r.err)
	}

	got = wait(context.Background(), 20)
	snap := pair()
	snap.Index = 20
	b, err := json.Marshal(snapshotFile{Version: snapshotVersion, State: snap})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Restore(io.NopCloser(bytes.NewReader(b))); err != nil {
		t.Fatal(err)
	}
	if r := <-got; r.err != nil || r.s.Index != 20 || r.s.Primary != "a" {
		t.Fatalf("waitIndex(20) across a restore = %+v, %v; want the restored state", r.s, r.err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	got = wait(ctx, 21)
	cancel()
	if r := <-got; !errors.Is(r.err, context.Canceled) || r.s.Index != 20 {
		t.Fatalf("waitIndex(21) after cancel = index %d, %v; want context.Canceled at index 20", r.s.Index, r.err)
	}
	got = wait(context.Background(), 21)
	f.close()
	if r := <-got; !errors.Is(r.err, ErrClosed) {
		t.Fatalf("waitIndex(21) after close: %v, want ErrClosed", r.err)
	}
}

func TestHolds(t *testing.T) {
	s := pair()
	tests := []struct {
		node  string
		epoch Epoch
		want  bool
	}{
		{"a", 3, true},
		{"a", 2, false}, // deposed epoch
		{"b", 3, false}, // not primary
		{"", 3, false},
	}
	for _, tc := range tests {
		if got := s.Holds(tc.node, tc.epoch); got != tc.want {
			t.Errorf("Holds(%q, %d) = %t, want %t", tc.node, tc.epoch, got, tc.want)
		}
	}
	s.Primary = ""
	if s.Holds("", 3) {
		t.Error("no primary: Holds(\"\", 3) = true")
	}
}

// TestAuthorize: a command stamped with its sender is applied only if the
// sender may give it; a witness never speaks for a data host.
func TestAuthorize(t *testing.T) {
	from := func(id string, c command) command { c.Sender, c.SenderWitness = id, id == "w" || id == "x"; return c }
	tests := []struct {
		name    string
		cmd     command
		wantErr error // nil: applied
	}{
		{"primary outdates its peer", from("a", command{Op: opMarkOutdated, By: "a", Node: "b", Epoch: 3}), nil},
		{"witness outdates b in a's name", from("w", command{Op: opMarkOutdated, By: "a", Node: "b", Epoch: 3}), ErrNotAuthorized},
		{"secondary outdates b in a's name", from("b", command{Op: opMarkOutdated, By: "a", Node: "b", Epoch: 3}), ErrNotAuthorized},
		{"witness in its own name is no primary", from("w", command{Op: opMarkOutdated, By: "w", Node: "b", Epoch: 3}), ErrNotPrimary},
		{"witness transfers a's role", from("w", command{Op: opTransfer, By: "a", Node: "b", Epoch: 3}), ErrNotAuthorized},
		{"primary transfers its role", from("a", command{Op: opTransfer, By: "a", Node: "b", Epoch: 3}), nil},
		{"primary reports its peer's disk", from("a", command{Op: opSetDisk, Node: "b", Disk: DiskInconsistent, Epoch: 3}), nil},
		{"witness reports b's disk", from("w", command{Op: opSetDisk, Node: "b", Disk: DiskUpToDate, Epoch: 3}), ErrNotAuthorized},
		{"secondary reports its own disk", from("b", command{Op: opSetDisk, Node: "b", Disk: DiskUpToDate, Epoch: 3}), ErrNotAuthorized},
		{"deposed primary's report is stale", from("a", command{Op: opSetDisk, Node: "b", Disk: DiskUpToDate, Epoch: 2}), ErrStaleEpoch},
		{"host reports its own ack", from("b", command{Op: opAckSeq, Node: "b", Seq: 9, Epoch: 3}), nil},
		{"primary reports its peer's ack", from("a", command{Op: opAckSeq, Node: "b", Seq: 9, Epoch: 3}), nil},
		{"witness reports b's ack", from("w", command{Op: opAckSeq, Node: "b", Seq: 9, Epoch: 3}), ErrNotAuthorized},
		{"secondary reports the primary's ack", from("b", command{Op: opAckSeq, Node: "a", Seq: 9, Epoch: 3}), ErrNotAuthorized},
		{"host reports its readiness", from("b", command{Op: opReportReady, Node: "b", Ready: true}), nil},
		{"witness reports b's readiness", from("w", command{Op: opReportReady, Node: "b", Ready: true}), ErrNotAuthorized},
		{"primary reports b's readiness", from("a", command{Op: opReportReady, Node: "b"}), ErrNotAuthorized},
		{"witness registers as data host a", from("w", command{Op: opRegister, Node: "a"}), ErrNotAuthorized},
		{"witness registers itself as a data host", from("w", command{Op: opRegister, Node: "w"}), ErrNotAuthorized},
		{"new witness registers itself", from("x", command{Op: opRegister, Node: "x", Witness: true}), nil},
		{"witness promotes (operator)", from("w", command{Op: opPromote, Node: "b"}), nil},
		{"witness demotes (operator)", from("w", command{Op: opDemote, Node: "a", Epoch: 3}), nil},
		{"witness fails over (operator)", from("w", command{Op: opFailover, By: "a", Epoch: 3}), nil},
		{"witness removes b (operator)", from("w", command{Op: opRemove, Node: "b"}), nil},
		{"a non-member promotes", command{Op: opPromote, Node: "b", Sender: "z"}, ErrNotAuthorized},
		{"a data host's name with a witness certificate", command{Op: opReportReady, Node: "a", Ready: true, Sender: "a", SenderWitness: true}, ErrNotAuthorized},
		{"an entry from before stamping", command{Op: opMarkOutdated, By: "a", Node: "b", Epoch: 3}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := pair()
			before := s.clone()
			_, err := s.apply(tc.cmd, 100, at)
			if !errors.Is(err, tc.wantErr) || (err == nil) != (tc.wantErr == nil) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if err != nil && !reflect.DeepEqual(s, before) {
				t.Fatalf("refused command changed the state: %+v", s)
			}
		})
	}
}

// FuzzApply decodes arbitrary log entries and applies them to the usual
// state: no panic, and a refused command leaves the state as it was.
func FuzzApply(f *testing.F) {
	for _, c := range []command{
		{Op: opMarkOutdated, By: "a", Node: "b", Epoch: 3, Sender: "w", SenderWitness: true},
		{Op: opSetDisk, Node: "b", Disk: DiskUpToDate, Epoch: 3, Sender: "a"},
		{Op: opRegister, Node: "x", Witness: true, Sender: "x", SenderWitness: true},
		{Op: opReportReady, Node: "b", Ready: true, Detail: "ok", Sender: "b"},
		{Op: opPromote, Node: "b", Force: true, Reason: "r", Sender: "w", SenderWitness: true},
	} {
		b, err := c.encode()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := decodeCommand(b)
		if err != nil {
			return
		}
		s := pair()
		before := s.clone()
		if _, err := s.apply(c, 100, at); err != nil && !reflect.DeepEqual(s, before) {
			t.Fatalf("refused %+v changed the state", c)
		}
	})
}
