package transport

import (
	"bytes"
	"context"
	"testing"
	"time"
)

// TestStageRequest: a Stage request reaches the handler with its
// operation and size, and its reply comes back; a malformed one is not
// submitted.
func TestStageRequest(t *testing.T) {
	s := startSecondary(t)
	sess, err := Dial(context.Background(), s.ln.Addr().String(), testConfig("a"))
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	got, err := Stage(sess, StageBegin, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if want := (StageReply{State: StageStaging, Staged: 1 << 20, Reason: "begin"}); got != want {
		t.Fatalf("reply %+v, want %+v", got, want)
	}
	for _, bad := range []struct {
		op   StageOp
		need int64
	}{{StageCommit, 1}, {StageBegin, -1}, {0, 0}, {StageStatus + 1, 0}} {
		if _, err := sess.SubmitStage(bad.op, bad.need); err == nil {
			t.Fatalf("stage %s of %d bytes was submitted", bad.op, bad.need)
		}
	}
}

// FuzzStageReply feeds arbitrary bytes to the Stage reply decoder, which
// the primary runs on what the target answers: an error or a reply that
// re-encodes to its input, never a panic.
func FuzzStageReply(f *testing.F) {
	for _, r := range []StageReply{
		{State: StageStaging, AsOf: time.Unix(1700000000, 0), Staged: 1 << 30},
		{State: StageApplying, ApplyDone: 10, ApplyTotal: 100},
		{State: StageRefused, Reason: "no room to stage the resync: it takes 512.0 MiB on /var/lib/ldmirror, 100.0 MiB is free there"},
	} {
		b, _ := r.MarshalBinary()
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var r StageReply
		if r.UnmarshalBinary(b) != nil {
			return
		}
		out, err := r.MarshalBinary()
		if err != nil || !bytes.Equal(out, b) {
			t.Fatalf("stage reply %+v does not re-encode to its input: %v", r, err)
		}
	})
}
