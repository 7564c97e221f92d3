package resync

import (
	"errors"
	"testing"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ldmirror/ldmirror/bitmap"
)

func TestAdmit(t *testing.T) {
	g := Generations{Current: 10}
	tracking := Generations{Current: 11, Bitmap: 10}
	for _, tc := range []struct {
		name        string
		local, peer Generations
		full        bool
		err         error
	}{
		{"in sync", g, g, false, nil},
		{"local wrote alone", tracking, g, false, nil},
		{"peer older than the bitmap", Generations{Current: 12, History: [2]uint64{10}}, g, true, nil},
		{"peer discarded its data", g, Generations{History: [2]uint64{10}}, true, nil},
		{"both wrote", tracking, Generations{Current: 13, Bitmap: 10}, false, ErrSplitBrain},
		{"peer wrote alone", g, Generations{Current: 13, Bitmap: 10}, false, ErrPeerNewer},
		{"nothing shared", g, Generations{Current: 99}, false, ErrUnrelated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			full, err := Admit(tc.local, tc.peer)
			if full != tc.full || !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
				t.Fatalf("Admit = %v, %v; want %v, %v", full, err, tc.full, tc.err)
			}
		})
	}
}

func TestPlanCatchUp(t *testing.T) {
	some := roaring.BitmapOf(3, 4, 5)
	for _, tc := range []struct {
		name            string
		behind          Behind
		crashed, always bool
		want            CatchUp
	}{
		{"nothing behind", Behind{}, false, false, CatchUp{}},
		{"empty set behind", Behind{Blocks: roaring.New()}, false, false, CatchUp{}},
		{"after a crash of this host", Behind{}, true, false, CatchUp{Checksum: true}},
		{"configured always", Behind{}, false, true, CatchUp{Checksum: true}},
		{"the peer wrote as primary", Behind{Blocks: some}, false, false, CatchUp{Extra: some, Checksum: true}},
		{"too many to send", Behind{TooLarge: true}, false, false, CatchUp{Full: true, Checksum: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := PlanCatchUp(tc.behind, tc.crashed, tc.always)
			if got.Full != tc.want.Full || got.Checksum != tc.want.Checksum || got.Extra != tc.want.Extra {
				t.Fatalf("PlanCatchUp = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestNeedsHandOff(t *testing.T) {
	g := Generations{Current: 10}
	for _, tc := range []struct {
		name        string
		local, peer Generations
		behind      bool
		want        bool
	}{
		{"in sync from the start", g, g, false, false},
		{"this host tracked writes", Generations{Current: 11, Bitmap: 10}, g, false, true},
		{"the peer holds another generation", Generations{Current: 11, History: [2]uint64{10}}, g, false, true},
		{"the peer wrote as primary", g, g, true, true},
	} {
		if got := NeedsHandOff(tc.local, tc.peer, tc.behind); got != tc.want {
			t.Errorf("%s: NeedsHandOff = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestDifferingRuns(t *testing.T) {
	d := func(bs ...byte) []byte {
		var out []byte
		for _, b := range bs {
			x := make([]byte, 16)
			x[0] = b
			out = append(out, x...)
		}
		return out
	}
	e := extentOf(10, 15)
	for _, tc := range []struct {
		name        string
		local, peer []byte
		want        [][2]uint32
	}{
		{"all equal", d(1, 2, 3, 4, 5, 6), d(1, 2, 3, 4, 5, 6), nil},
		{"two runs", d(1, 2, 3, 4, 5, 6), d(1, 9, 9, 4, 9, 6), [][2]uint32{{11, 12}, {14, 14}}},
		{"a short answer: everything", d(1, 2, 3, 4, 5, 6), d(1, 2), [][2]uint32{{10, 15}}},
	} {
		got := differingRuns(e, tc.local, tc.peer)
		if len(got) != len(tc.want) {
			t.Fatalf("%s: runs %v, want %v", tc.name, got, tc.want)
		}
		for i, r := range got {
			if r.First != tc.want[i][0] || r.Last != tc.want[i][1] {
				t.Fatalf("%s: runs %v, want %v", tc.name, got, tc.want)
			}
		}
	}
}

func extentOf(first, last uint32) bitmap.Extent { return bitmap.Extent{First: first, Last: last} }
