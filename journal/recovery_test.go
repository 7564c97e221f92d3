package journal

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

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
