package journal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
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

// TestTornTailDropped: a record after the last durable one that fails its
// checksum is a torn write: Open drops it, and numbering resumes there.
func TestTornTailDropped(t *testing.T) {
	j, path := newJournal(t, MinCapacity)
	appendWrites(t, j, 10, 1000)
	if err := j.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	appendWrites(t, j, 1, 1000) // seq 11, never synced
	img := crashCopy(t, path)
	off := recordOffset(j, 11)
	poke(t, img, off+HeaderSize+500, 0xff)

	c, err := Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rec := c.Recovered()
	if c.Next() != 11 || !rec.TornTail || rec.TornOffset != off || rec.Records != 10 {
		t.Fatalf("next %d, recovery %+v; want next 11, a torn tail at %d after 10 records", c.Next(), rec, off)
	}
	for i, r := range readAll(t, c, 1) {
		checkWrite(t, r, uint64(i+1), 1000)
	}
}

// TestCorruptMiddleIsAnError: a damaged record that was durable is not a
// torn tail: Open fails and names the file offset.
func TestCorruptMiddleIsAnError(t *testing.T) {
	j, path := newJournal(t, MinCapacity)
	appendWrites(t, j, 10, 1000)
	off := recordOffset(j, 4)
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	for name, at := range map[string]int64{"data": off + HeaderSize + 10, "header": off + 20} {
		t.Run(name, func(t *testing.T) {
			img := crashCopy(t, path)
			poke(t, img, at, 0x01)
			_, err := Open(img)
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), fmt.Sprintf("file offset %d", off)) || !strings.Contains(err.Error(), "seq 4") {
				t.Fatalf("Open = %v; want ErrCorrupt naming seq 4 at file offset %d", err, off)
			}
		})
	}
}

// TestStaleRecordAfterTornNotRevived: appends are written concurrently, so
// a crash can leave seq 4 torn and seq 5 whole. Open drops both; when the
// next session writes a new seq 4 of the same size and crashes in turn, the
// old seq 5 behind it must not come back.
func TestStaleRecordAfterTornNotRevived(t *testing.T) {
	j, path := newJournal(t, MinCapacity)
	appendWrites(t, j, 3, 1000)
	if err := j.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	appendWrites(t, j, 2, 1000)
	img := crashCopy(t, path)
	poke(t, img, recordOffset(j, 4)+HeaderSize+1, 0x80)

	k, err := Open(img)
	if err != nil {
		t.Fatal(err)
	}
	if k.Next() != 4 || !k.Recovered().TornTail {
		t.Fatalf("first reopen: next %d, recovery %+v", k.Next(), k.Recovered())
	}
	appendWrites(t, k, 1, 1000) // a new seq 4, same size, then a crash
	img2 := crashCopy(t, img)
	k.Close()
	l, err := Open(img2)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.Next() != 5 {
		t.Fatalf("second reopen: next %d, want 5 (the stale seq 5 came back)", l.Next())
	}
}

// TestSuperblockSlotTorn: a torn superblock write leaves the other slot.
func TestSuperblockSlotTorn(t *testing.T) {
	j, path := newJournal(t, MinCapacity)
	appendWrites(t, j, 4, 100)
	if err := j.Truncate(2); err != nil {
		t.Fatal(err)
	}
	slot := j.safeSlot
	j.Close()
	img := crashCopy(t, path)
	poke(t, img, int64(j.safeSlot)*SlotSize+9, 0xff) // the newest slot
	k, err := Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	if k.Oldest() != 3 || k.Next() != 5 {
		t.Fatalf("with slot %d torn: oldest %d next %d, want 3 and 5", slot, k.Oldest(), k.Next())
	}
	if _, err := Open(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Open of a missing file = %v", err)
	}
	bad := filepath.Join(t.TempDir(), "bad")
	os.WriteFile(bad, make([]byte, RingStart+MinCapacity), 0o600)
	if _, err := Open(bad); !errors.Is(err, ErrNotJournal) {
		t.Fatalf("Open of zeros = %v, want ErrNotJournal", err)
	}
}

func TestBadRecords(t *testing.T) {
	j, _ := newJournal(t, MinCapacity)
	for _, r := range []Record{
		{Kind: KindWrite},
		{Kind: KindWrite, Data: make([]byte, MaxData+1)},
		{Kind: KindTrim},
		{Kind: KindFlush, Offset: 1},
		{Kind: 9},
		{Kind: KindWrite, Offset: -1, Data: []byte{1}},
		{Kind: KindWrite, Data: make([]byte, MinCapacity)},
	} {
		if _, err := j.TryAppend(r); !errors.Is(err, ErrBadRecord) {
			t.Errorf("append of %s with %d bytes at %d = %v, want ErrBadRecord", r.Kind, len(r.Data), r.Offset, err)
		}
	}
}

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
