package journal

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
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

// TestAuthorityAndStopSurviveACrash: the authority, the stop flag and
// their reason are in the superblock: a crash image taken after each step
// reads back the state of that step, and a clean close is told from a
// crash.
func TestAuthorityAndStopSurviveACrash(t *testing.T) {
	j, path := newJournal(t, MinCapacity)
	type state struct {
		authority uint64
		why       string
		stopped   bool
		next      uint64
		oldest    uint64
	}
	check := func(step string, want state) {
		t.Helper()
		for name, k := range map[string]*Journal{"live": j, "crash image": reopenCopy(t, path)} {
			auth, why := k.Authority()
			stopped, _ := k.Stopped()
			got := state{auth, why, stopped, k.Next(), k.Oldest()}
			if got != want {
				t.Fatalf("%s, %s: %+v, want %+v", step, name, got, want)
			}
			if name == "crash image" && k.Recovered().Clean {
				t.Fatalf("%s: a crash image of an open journal reads as closed cleanly", step)
			}
		}
	}
	check("new", state{NoAuthority, "new journal: no bitmap resync completed in it yet", false, 1, 1})
	appendWrites(t, j, 3, 100)
	if err := j.SetAuthority(2, ""); err != nil {
		t.Fatal(err)
	}
	check("authority 2", state{2, "", false, 4, 1})
	if err := j.SetAuthority(NoAuthority, "resync running"); err != nil {
		t.Fatal(err)
	}
	check("no authority", state{NoAuthority, "resync running", false, 4, 1})
	if err := j.Stop("overflowed"); err != nil {
		t.Fatal(err)
	}
	check("stopped", state{NoAuthority, "overflowed", true, 4, 1})
	if err := j.Stop("again"); err != nil {
		t.Fatal(err)
	}
	check("stopped twice: the first reason stays", state{NoAuthority, "overflowed", true, 4, 1})
	if err := j.SetAuthority(3, ""); err == nil {
		t.Fatal("a stopped journal took an authority")
	}
	if err := j.Truncate(1); err != nil {
		t.Fatal(err)
	}
	check("stopped, truncated: stays stopped", state{NoAuthority, "overflowed", true, 4, 2})
	if err := j.Resume(); err != nil {
		t.Fatal(err)
	}
	resumed := "journaling resumed after it stopped: no bitmap resync completed since"
	check("resumed: every record freed", state{NoAuthority, resumed, false, 4, 4})
	appendWrites(t, j, 2, 100)
	if err := j.SetAuthority(5, ""); err != nil {
		t.Fatal(err)
	}
	check("authority after the resume", state{5, "", false, 6, 4})
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	k, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	if auth, _ := k.Authority(); auth != 5 || !k.Recovered().Clean || k.Recovered().Rebooted {
		t.Fatalf("after Close: authority %d, recovery %+v; want 5, clean, same boot", auth, k.Recovered())
	}
}

// TestRebootTold: a journal opened in another boot of the host, without a
// clean close, reports Rebooted; reopened in this boot it does not.
func TestRebootTold(t *testing.T) {
	j, path := newJournal(t, MinCapacity)
	appendWrites(t, j, 2, 100)
	img := crashCopy(t, path)
	if k := reopenCopy(t, img); k.Recovered().Rebooted || k.Recovered().Clean {
		t.Fatalf("crash image reopened in the same boot: %+v", k.Recovered())
	}
	// Write the superblock of another boot into both slots.
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	for slot := range 2 {
		b := make([]byte, superSize)
		if _, err := f.ReadAt(b, int64(slot)*SlotSize); err != nil {
			t.Fatal(err)
		}
		sb, err := decodeSuper(b)
		if err != nil {
			continue
		}
		sb.boot[0] ^= 0xff
		sb.encode(b)
		if _, err := f.WriteAt(b, int64(slot)*SlotSize); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	k := reopenCopy(t, img)
	if rec := k.Recovered(); !rec.Rebooted || rec.Clean || rec.Records != 2 {
		t.Fatalf("journal of another boot: %+v; want rebooted, not clean, 2 records", rec)
	}
}

// TestVersion1ReadsAsStopped: a journal of the first format (whose writer
// wrote locally before appending) opens with its records and numbering,
// stopped: it must not be redone.
func TestVersion1ReadsAsStopped(t *testing.T) {
	j, path := newJournal(t, MinCapacity)
	appendWrites(t, j, 3, 100)
	j.Close()
	img := crashCopy(t, path)
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	for slot := range 2 {
		b := make([]byte, superSize)
		f.ReadAt(b, int64(slot)*SlotSize)
		binary.BigEndian.PutUint32(b[4:8], version1)
		binary.BigEndian.PutUint32(b[60:64], crc32.Checksum(b[:60], castagnoli))
		f.WriteAt(b, int64(slot)*SlotSize)
	}
	f.Close()
	k, err := Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	if stopped, why := k.Stopped(); !stopped || !strings.Contains(why, "format 1") || k.Next() != 4 {
		t.Fatalf("version 1 journal: stopped %v (%s), next %d; want stopped, next 4", stopped, why, k.Next())
	}
}

// TestDiscard stops a journal for good and keeps its numbering; a journal
// that cannot be read is removed; no journal is no error.
func TestDiscard(t *testing.T) {
	j, path := newJournal(t, MinCapacity)
	appendWrites(t, j, 3, 100)
	j.Close()
	if done, err := Discard(path, "this host became secondary"); err != nil || !done {
		t.Fatalf("discard = %v, %v", done, err)
	}
	if done, err := Discard(path, "again"); err != nil || done {
		t.Fatalf("discard of a stopped journal = %v, %v; want nothing done", done, err)
	}
	k, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if stopped, why := k.Stopped(); !stopped || why != "this host became secondary" || k.Next() != 4 {
		t.Fatalf("discarded: stopped %v (%s), next %d", stopped, why, k.Next())
	}
	k.Close()
	bad := filepath.Join(t.TempDir(), "bad")
	os.WriteFile(bad, make([]byte, RingStart+MinCapacity), 0o600)
	if done, err := Discard(bad, "x"); err != nil || !done {
		t.Fatalf("discard of an unreadable journal = %v, %v", done, err)
	}
	if _, err := os.Stat(bad); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("an unreadable journal was not removed: %v", err)
	}
	if done, err := Discard(filepath.Join(t.TempDir(), "none"), "x"); err != nil || done {
		t.Fatalf("discard of no journal = %v, %v", done, err)
	}
}

// TestStopRemovesAJournalItCannotMark: if the superblock cannot be
// written, Stop removes the file (a journal not found is never resumed)
// and the journal refuses appends from then on.
func TestStopRemovesAJournalItCannotMark(t *testing.T) {
	j, path := newJournal(t, MinCapacity)
	appendWrites(t, j, 2, 100)
	j.f.Close() // every write fails from now on
	if err := j.Stop("overflowed"); err != nil {
		t.Fatalf("Stop = %v; want nil once the file is removed", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the journal file is still there: %v", err)
	}
	if _, err := j.TryAppend(Record{Kind: KindFlush}); err == nil || !strings.Contains(err.Error(), "removed") {
		t.Fatalf("append after a failed Stop = %v; want the journal's error", err)
	}
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
			if err := j.writeRecord(slow, pos, &rec); err != nil {
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
