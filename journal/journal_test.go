package journal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func newJournal(t testing.TB, capacity int64) (*Journal, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "journal")
	j, err := Create(path, Options{Capacity: capacity})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	return j, path
}

func block(seq uint64, n int) []byte {
	b := bytes.Repeat([]byte{byte(seq)}, n)
	copy(b, fmt.Sprintf("seq %d", seq))
	return b
}

func appendWrites(t testing.TB, j *Journal, n int, size int) []uint64 {
	t.Helper()
	var seqs []uint64
	for range n {
		next := j.Next()
		seq, err := j.TryAppend(Record{Kind: KindWrite, Offset: int64(next) * 4096, Data: block(next, size)})
		if err != nil {
			t.Fatal(err)
		}
		if seq != next {
			t.Fatalf("append got seq %d, want %d", seq, next)
		}
		seqs = append(seqs, seq)
	}
	return seqs
}

// readAll reads every record from seq from to the head.
func readAll(t *testing.T, j *Journal, from uint64) []Record {
	t.Helper()
	c, err := j.NewCursor(from)
	if err != nil {
		t.Fatal(err)
	}
	var out []Record
	for c.Ready() && c.Seq() < j.Next() {
		r, err := c.Next(context.Background(), nil)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

func checkWrite(t *testing.T, r Record, seq uint64, size int) {
	t.Helper()
	if r.Seq != seq || r.Kind != KindWrite || r.Offset != int64(seq)*4096 || !bytes.Equal(r.Data, block(seq, size)) {
		t.Fatalf("record %d = seq %d %s at %d (%d bytes), want the write of seq %d", seq, r.Seq, r.Kind, r.Offset, len(r.Data), seq)
	}
}

func TestAppendReadAndReopen(t *testing.T) {
	j, path := newJournal(t, MinCapacity)
	appendWrites(t, j, 5, 1000)
	if _, err := j.TryAppend(Record{Kind: KindTrim, Offset: 8192, Length: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := j.TryAppend(Record{Kind: KindFlush}); err != nil {
		t.Fatal(err)
	}
	recs := readAll(t, j, 1)
	if len(recs) != 7 {
		t.Fatalf("read %d records, want 7", len(recs))
	}
	for i := range 5 {
		checkWrite(t, recs[i], uint64(i+1), 1000)
	}
	if r := recs[5]; r.Kind != KindTrim || r.Offset != 8192 || r.Length != 1<<20 || r.Data != nil {
		t.Fatalf("trim record = %+v", r)
	}
	if r := recs[6]; r.Kind != KindFlush || r.Seq != 7 {
		t.Fatalf("flush record = %+v", r)
	}
	id := j.ID()
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	j, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if j.ID() != id || j.Next() != 8 || j.Oldest() != 1 || j.Recovered().Records != 7 || j.Recovered().TornTail {
		t.Fatalf("reopened: id %x next %d oldest %d recovery %+v; want id %x next 8 oldest 1, 7 records", j.ID(), j.Next(), j.Oldest(), j.Recovered(), id)
	}
	if seqs := appendWrites(t, j, 1, 10); seqs[0] != 8 {
		t.Fatalf("first append after reopen got seq %d, want 8", seqs[0])
	}
}

// TestWrapTruncateReopen goes around the ring several times: records that
// straddle its end read back whole, and sequence numbers continue across
// truncation and reopen, also when the journal is empty.
func TestWrapTruncateReopen(t *testing.T) {
	j, path := newJournal(t, MinCapacity)
	const size = 3000 // does not divide the ring: records straddle its end
	var next uint64 = 1
	for round := range 40 {
		appendWrites(t, j, 10, size)
		recs := readAll(t, j, next)
		for i, r := range recs {
			checkWrite(t, r, next+uint64(i), size)
		}
		if err := j.Truncate(next + 9); err != nil {
			t.Fatal(err)
		}
		next += 10
		if st := j.Stats(); st.Used != 0 || st.Oldest != next || st.Next != next {
			t.Fatalf("round %d: after truncating everything %+v", round, st)
		}
	}
	appendWrites(t, j, 3, size)
	if err := j.Truncate(next); err != nil { // keeps next+1, next+2
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	j, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if j.Oldest() != next+1 || j.Next() != next+3 {
		t.Fatalf("reopened: oldest %d next %d, want %d and %d", j.Oldest(), j.Next(), next+1, next+3)
	}
	recs := readAll(t, j, next+1)
	checkWrite(t, recs[0], next+1, size)
	checkWrite(t, recs[1], next+2, size)
	if err := j.Truncate(next + 2); err != nil {
		t.Fatal(err)
	}
	j.Close()
	if j, err = Open(path); err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if j.Next() != next+3 || j.Stats().Used != 0 {
		t.Fatalf("empty journal reopened with next %d, used %d; want %d, 0", j.Next(), j.Stats().Used, next+3)
	}
}

func TestFullWaitsForTruncate(t *testing.T) {
	j, _ := newJournal(t, MinCapacity)
	const size = 8000
	n := int(MinCapacity / (HeaderSize + size))
	appendWrites(t, j, n, size)
	rec := Record{Kind: KindWrite, Data: make([]byte, size)}
	if _, err := j.TryAppend(rec); !errors.Is(err, ErrFull) {
		t.Fatalf("TryAppend on a full ring = %v, want ErrFull", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if _, err := j.Append(ctx, rec); !errors.Is(err, ErrFull) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Append with an ending context = %v", err)
	}
	done := make(chan error, 1)
	go func() { _, err := j.Append(context.Background(), rec); done <- err }()
	deadline := time.Now().Add(5 * time.Second)
	for j.Stats().Waiting != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the append did not wait")
		}
		time.Sleep(time.Millisecond)
	}
	if err := j.Truncate(1); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestCursorTruncatedAndWaits(t *testing.T) {
	j, _ := newJournal(t, MinCapacity)
	appendWrites(t, j, 3, 100)
	if err := j.Truncate(2); err != nil {
		t.Fatal(err)
	}
	if _, err := j.NewCursor(2); !errors.Is(err, ErrTruncated) {
		t.Fatalf("cursor at a truncated seq = %v", err)
	}
	c, err := j.NewCursor(4)
	if err != nil {
		t.Fatal(err)
	}
	if c.Ready() {
		t.Fatal("cursor at the head is ready")
	}
	got := make(chan Record, 1)
	go func() {
		r, err := c.Next(context.Background(), nil)
		if err != nil {
			t.Error(err)
		}
		got <- r
	}()
	appendWrites(t, j, 1, 100)
	if r := <-got; r.Seq != 4 {
		t.Fatalf("waiting cursor got seq %d", r.Seq)
	}
}

// TestGroupCommit: many concurrent appenders that each Sync share few
// fdatasyncs, and every one of them is durable afterwards.
func TestGroupCommit(t *testing.T) {
	j, _ := newJournal(t, 8<<20)
	const writers, each = 16, 20
	var wg sync.WaitGroup
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				seq, err := j.Append(context.Background(), Record{Kind: KindWrite, Data: make([]byte, 4096)})
				if err == nil {
					err = j.Sync(context.Background())
				}
				if err == nil && j.Durable() < seq {
					err = fmt.Errorf("seq %d not durable after Sync (durable %d)", seq, j.Durable())
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	j.mu.Lock()
	rounds := j.syncDone
	j.mu.Unlock()
	t.Logf("%d appends+syncs cost %d fdatasyncs", writers*each, rounds)
	if rounds >= writers*each {
		t.Fatalf("%d fdatasyncs for %d syncs: no group commit", rounds, writers*each)
	}
}

// crashCopy copies the journal file as it is now (including what only the
// page cache holds), as a crash image of it.
func crashCopy(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "crash")
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func poke(t *testing.T, path string, off int64, b byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var old [1]byte
	if _, err := f.ReadAt(old[:], off); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{old[0] ^ b}, off); err != nil {
		t.Fatal(err)
	}
}

func recordOffset(j *Journal, seq uint64) int64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return RingStart + int64(j.positions.at(int(seq-j.tailSeq))%j.capacity)
}

// reopenCopy opens a crash image of the journal at path as it is now.
func reopenCopy(t *testing.T, path string) *Journal {
	t.Helper()
	j, err := Open(crashCopy(t, path))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	return j
}

// TestHeldRecords: a held record, and every one after it, is not returned
// by a cursor nor freed by Truncate until it is released.
func TestHeldRecords(t *testing.T) {
	j, _ := newJournal(t, MinCapacity)
	appendWrites(t, j, 1, 100)
	held, err := j.AppendHeld(context.Background(), Record{Kind: KindWrite, Offset: 8192, Data: block(2, 100)})
	if err != nil {
		t.Fatal(err)
	}
	appendWrites(t, j, 1, 100) // seq 3
	c, err := j.NewCursor(1)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := c.Next(context.Background(), nil); err != nil || r.Seq != 1 {
		t.Fatalf("first record: %d, %v", r.Seq, err)
	}
	if c.Ready() {
		t.Fatal("the cursor is ready at a held record")
	}
	if err := j.Truncate(3); err != nil {
		t.Fatal(err)
	}
	if j.Oldest() != held {
		t.Fatalf("truncate freed up to %d past the held record %d", j.Oldest()-1, held)
	}
	got := make(chan uint64)
	go func() {
		r, err := c.Next(context.Background(), nil)
		if err != nil {
			t.Error(err)
		}
		got <- r.Seq
	}()
	j.Release(held)
	if seq := <-got; seq != held {
		t.Fatalf("after the release the cursor returned %d, want %d", seq, held)
	}
	if err := j.Truncate(3); err != nil || j.Oldest() != 4 {
		t.Fatalf("truncate after the release: oldest %d, %v; want 4", j.Oldest(), err)
	}
	if _, err := j.TryAppendHeld(Record{Kind: KindWrite, Data: make([]byte, MinCapacity)}); !errors.Is(err, ErrBadRecord) {
		t.Fatalf("held append of a record too large = %v", err)
	}
	if err := j.Resume(); err != nil { // not stopped: nothing to do
		t.Fatal(err)
	}
}

// TestAppendWaitsForEarlierAppends: Append returns only once every record
// before its own is written, so that a crash of the process keeps every
// record whose append returned.
func TestAppendWaitsForEarlierAppends(t *testing.T) {
	j, _ := newJournal(t, MinCapacity)
	// Reserve seq 1 as a slow append would: assigned, not yet written.
	j.mu.Lock()
	slow := j.nextSeq
	j.nextSeq++
	j.positions.push(j.headPos)
	pos := j.headPos
	rec := Record{Kind: KindWrite, Data: block(slow, 100), Length: 100}
	j.headPos += HeaderSize + 100
	j.writing = append(j.writing, writing{seq: slow})
	j.mu.Unlock()
	var once sync.Once
	finish := func() { // the slow append completes
		once.Do(func() {
			if _, err := j.writeRecord(slow, pos, &rec, false); err != nil {
				t.Error(err)
			}
			j.mu.Lock()
			j.writing[0].done = true
			j.written = slow + 1
			j.writing = j.writing[:0]
			if j.appended != nil {
				close(j.appended)
				j.appended = nil
			}
			j.mu.Unlock()
		})
	}
	t.Cleanup(finish) // before Close, which waits for it

	done := make(chan uint64, 1)
	go func() {
		seq, err := j.TryAppend(Record{Kind: KindWrite, Data: block(2, 100)})
		if err != nil {
			t.Error(err)
		}
		done <- seq
	}()
	// The second append wrote its record and waits for the first (for the
	// channel that announces written records).
	deadline := time.Now().Add(5 * time.Second)
	for {
		j.mu.Lock()
		waiting := j.maxDone == slow+1 && j.appended != nil
		j.mu.Unlock()
		if waiting {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the second append did not wait for the first")
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case seq := <-done:
		t.Fatalf("append of seq %d returned before seq %d was written", seq, slow)
	default:
	}
	finish()
	if seq := <-done; seq != slow+1 {
		t.Fatalf("second append got seq %d", seq)
	}
}
