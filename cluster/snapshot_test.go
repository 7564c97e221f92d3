package cluster

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
)

type memSink struct {
	bytes.Buffer
	closed, cancelled bool
}

func (s *memSink) ID() string { return "mem" }

func (s *memSink) Cancel() error { s.cancelled = true; return nil }

func (s *memSink) Close() error { s.closed = true; return nil }

func snapshotBytes(t *testing.T, f *fsm) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	snap.Release()
	if !sink.closed || sink.cancelled {
		t.Fatalf("sink closed=%t cancelled=%t after a good persist", sink.closed, sink.cancelled)
	}
	return sink.Bytes()
}

// TestSnapshotRestore checks that a snapshot taken at every point of the
// history restores to the same state, and that replaying the rest of the
// log on the restored copy ends where the original ended.
func TestSnapshotRestore(t *testing.T) {
	logs := history(t)
	full := newFSM()
	for _, l := range logs {
		full.Apply(l)
	}
	for cut := 0; cut <= len(logs); cut++ {
		f := newFSM()
		for _, l := range logs[:cut] {
			f.Apply(l)
		}
		b := snapshotBytes(t, f)
		g := newFSM()
		g.Apply(&raft.Log{Index: 1, Data: mustEncode(t, command{Op: opRegister, Node: "stale"})})
		if err := g.Restore(io.NopCloser(bytes.NewReader(b))); err != nil {
			t.Fatalf("cut %d: restore: %v", cut, err)
		}
		if got, want := g.current(), f.current(); !reflect.DeepEqual(got, want) {
			t.Fatalf("cut %d: restored\n %+v\nwant %+v", cut, got, want)
		}
		for _, l := range logs[cut:] {
			g.Apply(l)
		}
		if got, want := g.current(), full.current(); !reflect.DeepEqual(got, want) {
			t.Fatalf("cut %d: restore+replay\n %+v\nwant %+v", cut, got, want)
		}
		if !bytes.Equal(snapshotBytes(t, g), snapshotBytes(t, full)) {
			t.Fatalf("cut %d: snapshots of equal states differ", cut)
		}
	}
}

// TestRestoreOldSnapshot restores a snapshot written before hosts reported
// readiness: the new fields start empty, and as long as nobody reports,
// the snapshot this version writes is byte for byte the old one, so an
// older member can still read it.
func TestRestoreOldSnapshot(t *testing.T) {
	const old = `{"version":1,"state":{"primary":"a","epoch":3,"epoch_index":10,"hosts":[` +
		`{"id":"a","disk":"uptodate","disk_epoch":1,"acked_seq":0,"acked_epoch":0},` +
		`{"id":"b","disk":"uptodate","disk_epoch":1,"acked_seq":0,"acked_epoch":0},` +
		`{"id":"w","witness":true,"disk":"diskless","disk_epoch":0,"acked_seq":0,"acked_epoch":0}],` +
		`"forced_promotions":0,"index":12}}`
	f := newFSM()
	if err := f.Restore(io.NopCloser(strings.NewReader(old))); err != nil {
		t.Fatalf("restore: %v", err)
	}
	want := pair()
	want.Index = 12
	if got := f.current(); !reflect.DeepEqual(got, want) {
		t.Fatalf("restored\n %+v\nwant %+v", got, want)
	}
	if got := string(snapshotBytes(t, f)); got != old {
		t.Fatalf("snapshot of an old state changed its encoding:\n got %s\nwant %s", got, old)
	}
	f.Apply(&raft.Log{Index: 13, Data: mustEncode(t, command{Op: opReportReady, Node: "b", Ready: true, Detail: "ok"}), AppendedAt: at})
	if h, _ := f.current().Host("b"); !h.Ready || h.ReadyDetail != "ok" || !h.ReadySince.Equal(at) {
		t.Fatalf("b after its first report on a restored state: %+v", h)
	}
}

func TestRestoreRefusesBadSnapshots(t *testing.T) {
	tests := []struct {
		name string
		data string
	}{
		{"empty", ""},
		{"not json", "{"},
		{"future version", `{"version":2,"state":{"epoch":9}}`},
		{"no version", `{"state":{"epoch":9}}`},
		{"too large", `{"version":1,"x":"` + string(bytes.Repeat([]byte("a"), maxSnapshot)) + `"}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFSM()
			f.Apply(&raft.Log{Index: 1, Data: mustEncode(t, command{Op: opRegister, Node: "a"})})
			before := f.current()
			err := f.Restore(io.NopCloser(bytes.NewReader([]byte(tc.data))))
			if !errors.Is(err, ErrCorruptStore) {
				t.Fatalf("err = %v, want ErrCorruptStore", err)
			}
			if got := f.current(); !reflect.DeepEqual(got, before) {
				t.Fatalf("failed restore changed the state: %+v", got)
			}
		})
	}
}
