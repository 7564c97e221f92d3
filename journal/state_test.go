package journal

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

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
