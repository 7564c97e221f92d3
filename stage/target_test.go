package stage

import (
	"strings"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/transport"
)

// TestTargetDecides: a resync is staged, refused for lack of room (with
// what to do), taken unprotected with --unsafe-inconsistent, with the
// protection off, or when the volume holds nothing worth keeping.
func TestTargetDecides(t *testing.T) {
	keep := func() (Begin, bool, string) { return Begin{AsOf: time.Unix(1700000000, 0), Source: "a"}, true, "" }
	discarded := func() (Begin, bool, string) { return Begin{}, false, "b's data was discarded: nothing to keep" }
	for _, tc := range []struct {
		name    string
		tune    func(*Target)
		need    int64
		want    transport.StageState
		reasons []string
	}{
		{"room", nil, 8 * testBS, transport.StageStaging, nil},
		{"nothing to stage", nil, 0, transport.StageIdle, nil},
		{"no room", nil, 1 << 60, transport.StageRefused, []string{"b: no room to stage the resync", "MiB", "--unsafe-inconsistent"}},
		{"no room, unsafe", func(tg *Target) { tg.Unsafe = true }, 1 << 60, transport.StageUnprotected, []string{"taken unprotected (--unsafe-inconsistent)"}},
		{"off", func(tg *Target) { tg.Off = true }, 8 * testBS, transport.StageUnprotected, []string{"--resync-protection=false"}},
		{"nothing to keep", func(tg *Target) { tg.Start = discarded }, 8 * testBS, transport.StageUnprotected, []string{"discarded"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			tg := &Target{Area: f.area, Node: "b", Start: keep}
			if tc.tune != nil {
				tc.tune(tg)
			}
			r, err := tg.answer(transport.StageBegin, tc.need)
			if err != nil || r.State != tc.want {
				t.Fatalf("begin of %d bytes: %+v, %v; want %s", tc.need, r, err, tc.want)
			}
			for _, s := range tc.reasons {
				if !strings.Contains(r.Reason, s) {
					t.Fatalf("reason %q lacks %q", r.Reason, s)
				}
			}
			if (f.area.Info().State == Staging) != (tc.want == transport.StageStaging) {
				t.Fatalf("area state %s after a %s answer", f.area.Info().State, r.State)
			}
		})
	}
}

// TestTargetCommitAndStatus: a commit answers at once; status waits for
// the apply (briefly) and reports it done.
func TestTargetCommitAndStatus(t *testing.T) {
	f := newFixture(t)
	tg := &Target{Area: f.area, Node: "b", Start: func() (Begin, bool, string) { return Begin{Source: "a"}, true, "" }}
	if r, _ := tg.answer(transport.StageBegin, 4*testBS); r.State != transport.StageStaging {
		t.Fatalf("begin: %+v", r)
	}
	f.write(0, 4*testBS, 1)
	if r, err := tg.answer(transport.StageCommit, 0); err != nil || r.State != transport.StageApplying && r.State != transport.StageIdle {
		t.Fatalf("commit: %+v, %v", r, err)
	}
	for r, _ := tg.answer(transport.StageStatus, 0); r.State != transport.StageIdle; r, _ = tg.answer(transport.StageStatus, 0) {
		if r.State != transport.StageApplying || r.Reason != "" {
			t.Fatalf("status during the apply: %+v", r)
		}
	}
	f.equal("the volume after the commit", f.baseBytes(), f.model)
}
