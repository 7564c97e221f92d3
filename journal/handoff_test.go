package journal

import (
	"bytes"
	"context"
	"testing"
)

// A cursor gets the records it reaches soon after their append from the
// buffers they were written from, a second reader from the ring, both
// with the data appended.
func TestHandoffMatchesRing(t *testing.T) {
	j, _ := newJournal(t, 16<<20)
	sizes := []int{100, 4096, 64 << 10, 1 << 20}
	first := j.Next()
	for i, n := range sizes {
		if _, err := j.Append(context.Background(), Record{Kind: KindWrite, Offset: int64(i) << 22, Data: block(first+uint64(i), n)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := j.Append(context.Background(), Record{Kind: KindFlush}); err != nil {
		t.Fatal(err)
	}
	for pass, wantHanded := range []bool{true, false} {
		c, err := j.NewCursor(first)
		if err != nil {
			t.Fatal(err)
		}
		for i, n := range sizes {
			rec, err := c.Next(context.Background(), nil)
			if err != nil {
				t.Fatal(err)
			}
			seq := first + uint64(i)
			handed := wantHanded
			if rec.Seq != seq || rec.Kind != KindWrite || rec.Offset != int64(i)<<22 || rec.Length != int64(n) || !bytes.Equal(rec.Data, block(seq, n)) {
				t.Fatalf("pass %d: record %d is seq %d kind %v offset %d length %d, data equal %v", pass, seq, rec.Seq, rec.Kind, rec.Offset, rec.Length, bytes.Equal(rec.Data, block(seq, n)))
			}
			if rec.Handed() != handed {
				t.Fatalf("pass %d: record %d of %d bytes handed off %v, want %v", pass, seq, n, rec.Handed(), handed)
			}
			j.Recycle(rec)
		}
		if rec, err := c.Next(context.Background(), nil); err != nil || rec.Kind != KindFlush || rec.Handed() {
			t.Fatalf("pass %d: the flush: %+v, %v", pass, rec, err)
		}
	}
}

// Past its budget the handoff keeps no more buffers, and a truncation
// drops the ones of the records it frees.
func TestHandoffBudgetAndTruncate(t *testing.T) {
	j, _ := newJournal(t, 64<<20)
	n := handoffBudget/(1<<20) + 4
	first := j.Next()
	for i := range n {
		if _, err := j.Append(context.Background(), Record{Kind: KindWrite, Data: block(first+uint64(i), 1<<20)}); err != nil {
			t.Fatal(err)
		}
	}
	j.mu.Lock()
	held, bytes := len(j.handoff.recs), j.handoff.bytes
	j.mu.Unlock()
	if held == 0 || held >= n || bytes > handoffBudget {
		t.Fatalf("the handoff holds %d of %d records, %d bytes (budget %d)", held, n, bytes, handoffBudget)
	}
	if err := j.Truncate(first + uint64(n) - 1); err != nil {
		t.Fatal(err)
	}
	j.mu.Lock()
	held, bytes = len(j.handoff.recs), j.handoff.bytes
	j.mu.Unlock()
	if held != 0 || bytes != 0 {
		t.Fatalf("after truncating every record the handoff holds %d records, %d bytes", held, bytes)
	}
}
