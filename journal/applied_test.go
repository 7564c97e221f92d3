package journal

import (
	"errors"
	"path/filepath"
	"testing"
)

func TestAppliedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "applied")
	a, err := OpenAppliedFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if p := a.Position(); p != (Position{}) {
		t.Fatalf("new file holds %+v", p)
	}
	for i := range uint64(5) {
		if err := a.Store(Position{ID: 9, Seq: 100 + i}); err != nil {
			t.Fatal(err)
		}
	}
	a.Close()
	// The newest slot torn: the one before it is read.
	b, err := OpenAppliedFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if p := b.Position(); p != (Position{ID: 9, Seq: 104}) {
		t.Fatalf("reopened at %+v", p)
	}
	newest := b.slot
	b.Close()
	poke(t, path, int64(newest)*appliedSlot+20, 0x40)
	c, err := OpenAppliedFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if p := c.Position(); p != (Position{ID: 9, Seq: 103}) {
		t.Fatalf("with the newest slot torn: %+v, want seq 103", p)
	}
	c.Close()
	poke(t, path, int64(1-newest)*appliedSlot+20, 0x40)
	if _, err := OpenAppliedFile(path); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("both slots bad: %v, want ErrCorrupt", err)
	}
}
