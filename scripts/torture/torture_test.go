package main

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestRecordRoundTrip(t *testing.T) {
	b := make([]byte, recordSize)
	encodeRecord(b, 7, 123456789, 42)
	id, round, ok := decodeRecord(b)
	if !ok || id != (recordID{7, 123456789}) || round != 42 {
		t.Fatalf("decode: %v round %d ok %v", id, round, ok)
	}
	other := make([]byte, recordSize)
	encodeRecord(other, 7, 123456790, 42)
	if string(b[offPayload:offSum]) == string(other[offPayload:offSum]) {
		t.Fatal("two records have the same payload")
	}
	for _, off := range []int{0, offWriter, offK + 7, offPayload + 100, recordSize - 1} {
		c := append([]byte(nil), b...)
		c[off] ^= 1
		if _, _, ok := decodeRecord(c); ok {
			t.Fatalf("a record with byte %d flipped decodes as intact", off)
		}
	}
	if _, _, ok := decodeRecord(make([]byte, recordSize)); ok {
		t.Fatal("a zero block decodes as a record")
	}
	if _, _, ok := decodeRecord(b[:recordSize-1]); ok {
		t.Fatal("a short block decodes as a record")
	}
}

// hist builds a history of records first..first+n-1 in slots of n slots,
// acknowledged, and optionally one more pending.
func hist(first, n, slots int, pending bool) history {
	var h history
	for k := first; k < first+n; k++ {
		h.Acks = append(h.Acks, ack{K: uint64(k), Slot: k % slots})
	}
	if pending {
		k := first + n
		h.Pending = &ack{K: uint64(k), Slot: k % slots}
	}
	return h
}

// slotsAfter is what the slots hold after base and the first p items of h.
func slotsAfter(base []int64, h history, p int) []int64 {
	v := append([]int64(nil), base...)
	for _, it := range h.items()[:p] {
		v[it.Slot] = int64(it.K)
	}
	return v
}

func TestCheckSlots(t *testing.T) {
	const slots = 8
	base := make([]int64, slots)
	for i := range base {
		base[i] = noRecord
	}
	base[5] = 5                    // from an earlier round
	h := hist(10, 13, slots, true) // wraps: records 10..22, pending 23
	cases := []struct {
		name             string
		obs              []int64
		present, lost    int
		landed, hasError bool
	}{
		{"all", slotsAfter(base, h, 13), 13, 0, false, false},
		{"pending landed", slotsAfter(base, h, 14), 13, 0, true, false},
		{"suffix lost", slotsAfter(base, h, 9), 9, 4, false, false},
		{"nothing of the round", slotsAfter(base, h, 0), 0, 13, false, false},
		{"hole", func() []int64 { v := slotsAfter(base, h, 13); v[(15)%slots] = 7; return v }(), 13, 0, false, true},
		{"older record back", func() []int64 { v := slotsAfter(base, h, 13); v[20%slots] = 12; return v }(), 13, 0, false, true},
		{"base slot damaged", func() []int64 { v := slotsAfter(base, h, 2); v[5] = noRecord; return v }(), 2, 11, false, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := checkSlots(base, tc.obs, h)
			if r.Present != tc.present || r.Lost != tc.lost || r.Landed != tc.landed || (len(r.Errors) > 0) != tc.hasError {
				t.Fatalf("got present %d lost %d landed %v errors %v; want present %d lost %d landed %v errors %v",
					r.Present, r.Lost, r.Landed, r.Errors, tc.present, tc.lost, tc.landed, tc.hasError)
			}
			if tc.lost > 0 && r.Lost1st != tc.present {
				t.Fatalf("first lost index %d, want %d", r.Lost1st, tc.present)
			}
		})
	}
}

func TestCheckFiles(t *testing.T) {
	h := hist(100, 5, 1<<30, true)
	on := func(ks ...uint64) func(uint64) bool {
		return func(k uint64) bool {
			for _, x := range ks {
				if x == k {
					return true
				}
			}
			return false
		}
	}
	cases := []struct {
		name          string
		found         func(uint64) bool
		present, lost int
		landed, hole  bool
	}{
		{"all", on(100, 101, 102, 103, 104), 5, 0, false, false},
		{"all and the pending one", on(100, 101, 102, 103, 104, 105), 5, 0, true, false},
		{"suffix lost", on(100, 101), 2, 3, false, false},
		{"hole", on(100, 102, 103, 104), 5, 0, false, true},
		{"none", on(), 0, 5, false, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := checkFiles(h, tc.found)
			if r.Present != tc.present || r.Lost != tc.lost || r.Landed != tc.landed || (len(r.Errors) > 0) != tc.hole {
				t.Fatalf("got present %d lost %d landed %v errors %v; want %d %d %v hole %v",
					r.Present, r.Lost, r.Landed, r.Errors, tc.present, tc.lost, tc.landed, tc.hole)
			}
		})
	}
}

func TestScheduleIsSeededAndCoversEveryKind(t *testing.T) {
	a, b := schedule(42, 30, "sync", nil), schedule(42, 30, "sync", nil)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("one seed gave two schedules")
	}
	if short := schedule(42, 7, "sync", nil); !reflect.DeepEqual(short, a[:7]) {
		t.Fatal("a shorter campaign is not a prefix of a longer one with the same seed")
	}
	if reflect.DeepEqual(a, schedule(43, 30, "sync", nil)) {
		t.Fatal("seeds 42 and 43 gave the same schedule")
	}
	kinds := repertoire()
	seen := map[string]bool{}
	for _, f := range a[:len(kinds)] {
		seen[f.Kind] = true
	}
	if len(seen) != len(kinds) {
		t.Fatalf("the first %d rounds cover %d kinds, want all", len(kinds), len(seen))
	}
	for _, f := range a {
		k := kindOf(f.Kind)
		if f.Hold < k.hold[0] || f.Hold > k.hold[1] || f.React < k.react[0] || f.React > k.react[1] || f.Lead > 1500*time.Millisecond {
			t.Fatalf("%s: a parameter out of its range %+v", f, k)
		}
		if _, err := newFault(f); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(f.String(), "round ") {
			t.Fatalf("String() = %q", f)
		}
	}
}

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Second)
	}
	for p, want := range map[float64]time.Duration{50: 50 * time.Second, 99: 99 * time.Second, 100: 100 * time.Second} {
		if got := percentile(ds, p); got != want {
			t.Fatalf("p%v = %v, want %v", p, got, want)
		}
	}
	if percentile(nil, 50) != 0 || percentile([]time.Duration{time.Second}, 99) != time.Second {
		t.Fatal("percentile of an empty or one-element set")
	}
}

// The sampler reports two hosts serving as primary in one epoch, and not
// two primaries in different epochs (a deposed one stepping down).
func TestSamplerSplitBrain(t *testing.T) {
	s := &sampler{servers: map[uint64]map[string]sample{}}
	now := time.Now()
	s.add(sample{T: now, Host: "a", Role: "primary", Serving: 3},
		sample{T: now, Host: "b", Role: "secondary"},
		sample{T: now.Add(time.Second), Host: "b", Role: "primary", Serving: 4},
		sample{T: now.Add(time.Second), Host: "a", Role: "primary", Serving: 3})
	if got := s.splitBrains(0); len(got) != 0 {
		t.Fatalf("split brain reported for primaries of different epochs: %v", got)
	}
	s.add(sample{T: now.Add(2 * time.Second), Host: "a", Role: "primary", Serving: 4})
	got := s.splitBrains(0)
	if len(got) != 1 || !strings.Contains(got[0], "epoch 4") {
		t.Fatalf("splits %v, want one for epoch 4", got)
	}
	if s.splitBrains(1) != nil {
		t.Fatal("splitBrains(from) returned what was already reported")
	}
	if len(s.drain()) != 5 || len(s.drain()) != 0 {
		t.Fatal("drain does not return the samples once")
	}
}

func TestOwner(t *testing.T) {
	var order []int
	o := &owner{logf: func(string, ...any) {}}
	o.Cleanup(func() { order = append(order, 1) })
	o.Cleanup(func() { order = append(order, 2) })
	func() {
		defer func() {
			a, ok := recover().(abort)
			if !ok || a.msg != "lab: boom 3" || a.skip {
				t.Fatalf("Fatalf panicked with %+v", a)
			}
		}()
		o.Fatalf("lab: boom %d", 3)
	}()
	o.runCleanups()
	o.runCleanups()
	if !reflect.DeepEqual(order, []int{2, 1}) {
		t.Fatalf("cleanups ran in order %v, want [2 1] once", order)
	}
	o.Errorf("close: %s", "x")
	if e := o.errors(); len(e) != 1 || e[0] != "close: x" {
		t.Fatalf("errors %v", e)
	}
}

func TestParseFlags(t *testing.T) {
	if _, err := parseFlags([]string{"--replay"}); err == nil {
		t.Fatal("--replay without --seed accepted")
	}
	if _, err := parseFlags([]string{"--recovery", "agent"}); err == nil || !strings.Contains(err.Error(), "not implemented") {
		t.Fatalf("--recovery agent: %v", err)
	}
	o, err := parseFlags([]string{"--seed", "17", "--replay", "--mode", "async", "--daemon-arg=--activity-log=false"})
	if err != nil || o.seed != 17 || !o.replay || o.mode != "async" || o.size != 128<<20 || len(o.daemonArgs) != 1 {
		t.Fatalf("parse: %+v %v", o, err)
	}
	if got := replayCommand(o, 5); got != "go run ./scripts/torture --seed 17 --mode async --rounds 5 --replay --daemon-arg=--activity-log=false" {
		t.Fatalf("replay command %q", got)
	}
}
