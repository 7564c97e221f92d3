package bitmap

import (
	"errors"
	"testing"
)

func TestNewRejects(t *testing.T) {
	for _, tc := range []struct {
		name      string
		size      int64
		blockSize int
		want      error
	}{
		{"not power of two", 1 << 20, 3000, ErrBlockSize},
		{"too small", 1 << 20, 256, ErrBlockSize},
		{"too many blocks", 1 << 45, 512, ErrTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.size, tc.blockSize); !errors.Is(err, tc.want) {
				t.Fatalf("New(%d, %d) = %v, want %v", tc.size, tc.blockSize, err, tc.want)
			}
		})
	}
}

func TestExtentOf(t *testing.T) {
	s, err := New(1<<20, 4096)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		off, n int64
		want   Extent
	}{
		{0, 4096, Extent{0, 0}},
		{0, 4097, Extent{0, 1}},
		{4095, 2, Extent{0, 1}},
		{8192, 512, Extent{2, 2}},
		{1<<20 - 4096, 4096, Extent{255, 255}},
	} {
		if got := s.ExtentOf(tc.off, tc.n); got != tc.want {
			t.Errorf("ExtentOf(%d, %d) = %v, want %v", tc.off, tc.n, got, tc.want)
		}
	}
}

// TestInFlightCounts is the SNDR pitfall (docs/design.md): a block written twice
// before the first ack must stay dirty until both writes are acked.
func TestInFlightCounts(t *testing.T) {
	type step struct {
		op    string // mark, ack, fail, clear
		e     Extent
		dirty uint64
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"single write", []step{
			{"mark", Extent{0, 3}, 4},
			{"ack", Extent{0, 3}, 0},
		}},
		{"overlap stays dirty until both acked", []step{
			{"mark", Extent{0, 3}, 4},
			{"mark", Extent{2, 5}, 6},
			{"ack", Extent{0, 3}, 4}, // blocks 2,3 still in flight
			{"ack", Extent{2, 5}, 0},
		}},
		{"failed write stays out of sync", []step{
			{"mark", Extent{0, 1}, 2},
			{"mark", Extent{1, 2}, 3},
			{"fail", Extent{0, 1}, 3},
			{"ack", Extent{1, 2}, 2}, // block 1 failed earlier: still dirty
			{"clear", Extent{0, 1}, 0},
		}},
		{"clear keeps in-flight blocks dirty", []step{
			{"mark", Extent{7, 7}, 1},
			{"fail", Extent{7, 7}, 1},
			{"mark", Extent{7, 7}, 1},
			{"clear", Extent{7, 7}, 1},
			{"ack", Extent{7, 7}, 0},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(1<<20, 4096)
			if err != nil {
				t.Fatal(err)
			}
			for i, st := range tc.steps {
				switch st.op {
				case "mark":
					s.Mark(st.e)
				case "ack":
					s.Ack(st.e)
				case "fail":
					s.Fail(st.e)
				case "clear":
					oos := s.OutOfSync()
					oos.RemoveRange(0, uint64(st.e.First))
					oos.RemoveRange(uint64(st.e.Last)+1, 1<<32)
					s.ClearOutOfSync(oos)
				}
				if got := s.Dirty(); got != st.dirty {
					t.Fatalf("step %d (%s %v): dirty = %d, want %d", i, st.op, st.e, got, st.dirty)
				}
			}
			if n := s.InFlight(); n != 0 {
				t.Fatalf("in flight after all steps = %d, want 0", n)
			}
		})
	}
}

func TestFinishWithoutMarkPanics(t *testing.T) {
	s, err := New(1<<20, 4096)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if recover() == nil {
			t.Fatal("Ack of an unmarked extent did not panic")
		}
	}()
	s.Ack(Extent{1, 1})
}

func TestCleanSetIsSmall(t *testing.T) {
	s, err := New(1<<40, 4096) // 1 TiB
	if err != nil {
		t.Fatal(err)
	}
	if got := s.SizeInBytes(); got > 1<<20 {
		t.Fatalf("clean 1 TiB set uses %d bytes, want <= 1 MiB", got)
	}
}

func BenchmarkMarkAck(b *testing.B) {
	s, err := New(1<<30, 4096)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		e := s.ExtentOf(int64(i%4096)*65536, 4096)
		s.Mark(e)
		s.Ack(e)
	}
}

func BenchmarkMarkAck128K(b *testing.B) {
	s, err := New(1<<30, 4096)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		e := s.ExtentOf(int64(i%4096)*131072, 131072)
		s.Mark(e)
		s.Ack(e)
	}
}

func TestMarkAllOutOfSync(t *testing.T) {
	s, err := New(1<<20+4096, 4096) // 257 blocks
	if err != nil {
		t.Fatal(err)
	}
	s.MarkAllOutOfSync()
	if got := s.Dirty(); got != 257 {
		t.Fatalf("dirty = %d, want 257", got)
	}
	s.ClearOutOfSync(s.OutOfSync())
	if got := s.Dirty(); got != 0 {
		t.Fatalf("dirty after clear = %d", got)
	}
}
