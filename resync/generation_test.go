package resync

import "testing"

// history replays the life of a pair and checks what Decide says at the end.
func TestDecide(t *testing.T) {
	type pair struct{ a, b Generations }
	start := func() pair {
		g := NewGenerations()
		return pair{g, g}
	}
	for _, tc := range []struct {
		name  string
		steps func(p *pair)
		want  Direction // from a's side
	}{
		{"fresh pair", func(p *pair) {}, InSync},
		{"a wrote without b", func(p *pair) { p.a.StartTracking() }, LocalSource},
		{"b wrote without a", func(p *pair) { p.b.StartTracking() }, PeerSource},
		{"a lost b twice before they met", func(p *pair) {
			p.a.StartTracking()
			p.a.StartTracking() // already tracking: no new generation
		}, LocalSource},
		{"both wrote: split brain", func(p *pair) { p.a.StartTracking(); p.b.StartTracking() }, SplitBrain},
		{"resynced a to b, then in sync", func(p *pair) {
			p.a.StartTracking()
			p.b.SyncedFrom(p.a)
			p.a.Synced()
		}, InSync},
		{"b fell two generations behind: full", func(p *pair) {
			p.a.StartTracking()
			p.a.Synced() // a believed b caught up, b never saw it (b lost its disk, say)
			p.a.StartTracking()
		}, LocalSourceFull},
		{"a wrote, synced, then b wrote alone", func(p *pair) {
			p.a.StartTracking()
			p.b.SyncedFrom(p.a)
			p.a.Synced()
			p.b.StartTracking()
		}, PeerSource},
		{"split brain after one side moved on", func(p *pair) {
			p.a.StartTracking()
			p.a.Synced()
			p.a.StartTracking()
			p.b.StartTracking()
		}, SplitBrain},
		{"unrelated volumes", func(p *pair) { p.b = NewGenerations() }, Unrelated},
		{"split brain resolved by b discarding", func(p *pair) {
			p.a.StartTracking()
			p.b.StartTracking()
			p.b.Discard()
		}, LocalSourceFull},
		{"both discarded", func(p *pair) { p.a.Discard(); p.b.Discard() }, Unrelated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := start()
			tc.steps(&p)
			if got := Decide(p.a, p.b); got != tc.want {
				t.Fatalf("Decide(a=%v, b=%v) = %v, want %v", p.a, p.b, got, tc.want)
			}
			// The decision must be symmetric.
			mirror := map[Direction]Direction{InSync: InSync, LocalSource: PeerSource, PeerSource: LocalSource,
				LocalSourceFull: PeerSourceFull, PeerSourceFull: LocalSourceFull, SplitBrain: SplitBrain, Unrelated: Unrelated}
			if got := Decide(p.b, p.a); got != mirror[tc.want] {
				t.Fatalf("Decide(b, a) = %v, want %v", got, mirror[tc.want])
			}
		})
	}
}
