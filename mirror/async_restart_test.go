package mirror

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/blockdev"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ldmirror/ldmirror/bitmap"
	"github.com/ldmirror/ldmirror/journal"
)

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

// crashImage copies the primary's journal and backing file as they are
// now, page cache included: what a kill -9 of the primary's process leaves.
func (p *asyncPair) crashImage() (jrnl, disk string) {
	p.t.Helper()
	dir := p.t.TempDir()
	jrnl, disk = filepath.Join(dir, "journal"), filepath.Join(dir, "a.img")
	copyFile(p.t, p.jrnlPath, jrnl)
	copyFile(p.t, p.priPath, disk)
	return jrnl, disk
}

// restart replaces the primary by the one a new process starts on a crash
// image, as the daemon does: OpenJournal (which redoes the journal onto the
// disk), a dirty set holding what the write intent log would recover, and
// SetAsync. The old Mirror is closed; it writes to its own files only.
func (p *asyncPair) restart(jrnl, disk string, recovered *roaring.Bitmap, opt JournalOptions) JournalStart {
	p.t.Helper()
	if p.sess != nil {
		p.disconnect()
	}
	if err := p.mirror.Close(); err != nil {
		p.t.Fatal(err)
	}
	dev := openFileSized(p.t, disk, p.size)
	if opt.Capacity == 0 {
		opt.Capacity = p.jrnl.Capacity()
	}
	st, err := OpenJournal(context.Background(), jrnl, dev, opt)
	if err != nil {
		p.t.Fatal(err)
	}
	p.dirty, _ = bitmap.New(p.size, 4096)
	p.dirty.MarkOutOfSync(recovered)
	p.mirror = mustNew(p.t, dev, Config{Dirty: p.dirty, Async: &AsyncConfig{Journal: st.Journal, Discarded: st.Discarded, DiscardedID: st.DiscardedID}})
	p.jrnl, p.jrnlPath, p.priPath = st.Journal, jrnl, disk
	return st
}

// rebootImage makes a journal image look last opened in another boot of
// the host: it flips a byte of the boot ID in both superblock slots and
// seals them again (layout: journal/format.go).
func rebootImage(t *testing.T, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for slot := range int64(2) {
		b := make([]byte, 512)
		if _, err := f.ReadAt(b, slot*journal.SlotSize); err != nil {
			t.Fatal(err)
		}
		b[72] ^= 0xff
		binary.BigEndian.PutUint32(b[508:], crc32.Checksum(b[:508], crc32.MakeTable(crc32.Castagnoli)))
		if _, err := f.WriteAt(b, slot*journal.SlotSize); err != nil {
			t.Fatal(err)
		}
	}
}

// TestAsyncRestartDecision: how a restarted primary catches its peer up
// depends on how its previous run ended. The previous run always wrote
// while the peer was away, then its process died; the restart resumes the
// journal, redone onto the disk, and catches up from it, unless the
// journal cannot be trusted, and then it says why and resyncs the bitmap.
// Either way the two disks end equal.
func TestAsyncRestartDecision(t *testing.T) {
	for _, tc := range []struct {
		name     string
		capacity int64
		before   func(t *testing.T, p *asyncPair) // after the disconnected writes, before the crash
		image    func(t *testing.T, jrnl string)  // what else the crash did to the journal
		opt      JournalOptions
		resumed  bool
		discard  string // in JournalStart.Discarded
		catchUp  string
		reason   string // in the fallback reason after the catch-up
	}{
		{name: "process killed", resumed: true, catchUp: CatchUpJournal},
		{name: "journal overflowed", capacity: journal.MinCapacity,
			discard: "journaling had stopped: journal overflowed while disconnected", catchUp: CatchUpBitmap,
			reason: "journal of the previous run"},
		{name: "block out of sync for another reason", resumed: true, catchUp: CatchUpBitmap,
			before: func(t *testing.T, p *asyncPair) {
				if err := p.mirror.MarkOutOfSync(roaring.BitmapOf(400), "the peer wrote it"); err != nil {
					t.Fatal(err)
				}
			},
			reason: "before a bitmap resync: the peer wrote it"},
		{name: "host rebooted", catchUp: CatchUpBitmap,
			image:   rebootImage,
			discard: "the host went down with the journal open",
			reason:  "which was discarded: the host went down with the journal open"},
		{name: "journal size changed", opt: JournalOptions{Capacity: 8 << 20},
			discard: "the journal size changed from 16777216 to 8388608 bytes", catchUp: CatchUpBitmap,
			reason: "which was discarded: the journal size changed"},
		{name: "whole volume to resync", opt: JournalOptions{Discard: "no scoreboard"},
			discard: "no scoreboard", catchUp: CatchUpBitmap, reason: "which was discarded: no scoreboard"},
		{name: "journal unreadable", discard: "the journal cannot be read", catchUp: CatchUpBitmap,
			image: func(t *testing.T, jrnl string) {
				if err := os.WriteFile(jrnl, make([]byte, journal.RingStart), 0o600); err != nil {
					t.Fatal(err)
				}
			},
			reason: "the peer reports no position in this journal"},
		{name: "journal gone", catchUp: CatchUpBitmap,
			image: func(t *testing.T, jrnl string) {
				if err := os.Remove(jrnl); err != nil {
					t.Fatal(err)
				}
			},
			reason: "the peer reports no position in this journal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newAsyncPair(t, asyncOptions{capacity: tc.capacity})
			p.connect()
			p.catchUp() // a new journal: a bitmap resync (of nothing) gives it its authority
			h := newHistory()
			for i := range 20 {
				h.write(t, p.mirror, i)
			}
			p.drainAndCompare()
			p.disconnect()
			for i := range 60 {
				h.write(t, p.mirror, 100+i%40)
			}
			if tc.before != nil {
				tc.before(t, p)
			}
			recovered := p.dirty.OutOfSync()
			jrnl, disk := p.crashImage()
			if tc.image != nil {
				tc.image(t, jrnl)
			}
			st := p.restart(jrnl, disk, recovered, tc.opt)
			if st.Resumed != tc.resumed || !strings.Contains(st.Discarded, tc.discard) || (tc.discard == "") != (st.Discarded == "") {
				t.Fatalf("restart: resumed %v, discarded %q; want resumed %v, discarded %q", st.Resumed, st.Discarded, tc.resumed, tc.discard)
			}
			if tc.resumed && st.Redone == 0 {
				t.Fatal("a resumed journal with records was not redone")
			}
			if tc.discard != "" {
				if fr := p.mirror.Status().FallbackReason; !strings.Contains(fr, tc.discard) {
					t.Fatalf("status before the reconnect says %q; want the discard's reason", fr)
				}
			}
			p.connect()
			p.catchUp()
			ms := p.mirror.Status()
			if ms.LastCatchUp != tc.catchUp || !strings.Contains(ms.FallbackReason, tc.reason) {
				t.Fatalf("catch-up by %q (%s); want %q, %q", ms.LastCatchUp, ms.FallbackReason, tc.catchUp, tc.reason)
			}
			if k, err := h.prefix(p.secondary.snapshot()); err != nil || k != len(h.blocks) {
				t.Fatalf("after the catch-up the secondary is at write %d, %v; want all %d", k, err, len(h.blocks))
			}
			p.drainAndCompare()
		})
	}
}

// heldDevice holds the local write at one offset until released.
type heldDevice struct {
	blockdev.Device
	at      int64
	entered chan struct{}
	release chan struct{}
}

func (d *heldDevice) WriteAt(b []byte, off int64) (int, error) {
	if off == d.at {
		close(d.entered)
		<-d.release
	}
	return d.Device.WriteAt(b, off)
}

// TestAsyncAppendBeforeLocalWrite: a write is in the journal before it is
// written locally, and is not shipped before that ended. A crash in
// between leaves a journal that, redone, completes the local write; the
// restart catches the peer up from it and both disks end equal. (Written
// locally first, as before issue 21, a crash after the local write and
// before the append left a change that no record held.)
func TestAsyncAppendBeforeLocalWrite(t *testing.T) {
	const gatedBlock = 7
	var g *heldDevice
	p := newAsyncPair(t, asyncOptions{local: func(d blockdev.Device) blockdev.Device {
		g = &heldDevice{Device: d, at: gatedBlock * 4096, entered: make(chan struct{}), release: make(chan struct{})}
		return g
	}})
	p.connect()
	p.catchUp()
	h := newHistory()
	for i := range 5 {
		h.write(t, p.mirror, i)
	}
	p.drainAndCompare()

	next := p.jrnl.Next()
	held := make(chan error, 1)
	go func() { _, err := p.mirror.WriteAt(content(5), gatedBlock*4096); held <- err }()
	<-g.entered
	h.blocks = append(h.blocks, gatedBlock)
	h.byBlk[gatedBlock] = append(h.byBlk[gatedBlock], 5)
	h.write(t, p.mirror, 9) // a later write to another block completes
	if p.jrnl.Next() != next+2 {
		t.Fatalf("the journal's next seq is %d; want %d: the held write was not appended before its local write", p.jrnl.Next(), next+2)
	}
	// Neither the held write nor the one after it reach the peer.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	err := p.mirror.Drain(ctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("drain while a local write is held = %v; want it to wait", err)
	}
	if k, err := h.prefix(p.secondary.snapshot()); err != nil || k != 5 {
		t.Fatalf("the secondary is at write %d, %v; want 5: it got a write this disk lacks", k, err)
	}

	recovered := p.dirty.OutOfSync()
	recovered.AddRange(gatedBlock, gatedBlock+1)
	jrnl, disk := p.crashImage()
	onDisk := make([]byte, 4096)
	if f, err := os.Open(disk); err != nil {
		t.Fatal(err)
	} else {
		f.ReadAt(onDisk, gatedBlock*4096)
		f.Close()
	}
	if bytes.Equal(onDisk, content(5)) {
		t.Fatal("the crash image already holds the held write")
	}
	p.disconnect()
	close(g.release)
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	st := p.restart(jrnl, disk, recovered, JournalOptions{})
	if !st.Resumed || st.Redone < 2 {
		t.Fatalf("restart: %+v; want the journal resumed and its records redone", st)
	}
	got := make([]byte, 4096)
	if _, err := p.mirror.ReadAt(got, gatedBlock*4096); err != nil || !bytes.Equal(got, content(5)) {
		t.Fatalf("after the redo block %d does not hold the write whose local write the crash interrupted (%v)", gatedBlock, err)
	}
	p.connect()
	p.catchUp()
	if ms := p.mirror.Status(); ms.LastCatchUp != CatchUpJournal {
		t.Fatalf("catch-up by %q (%s); want journal", ms.LastCatchUp, ms.FallbackReason)
	}
	if k, err := h.prefix(p.secondary.snapshot()); err != nil || k != len(h.blocks) {
		t.Fatalf("after the catch-up the secondary is at write %d, %v; want all %d", k, err, len(h.blocks))
	}
	p.drainAndCompare()
}

// TestAsyncAuthorityIsDurable: the journal's authority, as a crash image
// reads it, is none while a bitmap resync runs, the resync's closing
// barrier once it completed, and none again once a block goes out of sync
// for a reason the journal does not cover; an overflow stops the journal
// before any write goes unjournaled.
func TestAsyncAuthorityIsDurable(t *testing.T) {
	p := newAsyncPair(t, asyncOptions{capacity: journal.MinCapacity, timeout: 30 * time.Second})
	imageAuthority := func() (uint64, string, bool) {
		t.Helper()
		jrnl, _ := p.crashImage()
		j, err := journal.Open(jrnl)
		if err != nil {
			t.Fatal(err)
		}
		defer j.Close()
		auth, why := j.Authority()
		stopped, _ := j.Stopped()
		return auth, why, stopped
	}
	if auth, why, _ := imageAuthority(); auth != journal.NoAuthority || !strings.Contains(why, "new journal") {
		t.Fatalf("new journal: authority %d (%s); want none", auth, why)
	}
	p.connect()
	p.catchUp()
	h := newHistory()
	for i := range 10 {
		h.write(t, p.mirror, i)
	}
	p.drainAndCompare()
	first, _, _ := imageAuthority()
	if first == journal.NoAuthority || first >= p.jrnl.Next() {
		t.Fatalf("after the first resync: authority %d, next %d", first, p.jrnl.Next())
	}

	// A resync held up by the secondary: no authority while it runs.
	p.disconnect()
	for i := range 40 { // overflows the 64 KiB journal; one resync run each
		h.write(t, p.mirror, 100+2*i)
	}
	if auth, _, stopped := imageAuthority(); auth != journal.NoAuthority || !stopped {
		t.Fatalf("after an overflow: authority %d, stopped %v; want none, stopped", auth, stopped)
	}
	var copies atomic.Int32
	reached, release := make(chan struct{}), make(chan struct{})
	hook := func(int64) {
		if copies.Add(1) == 3 {
			close(reached)
			<-release
		}
	}
	p.secondary.before.Store(&hook)
	p.connect()
	done := make(chan error, 1)
	go func() { done <- p.mirror.CatchUp(context.Background(), false) }()
	<-reached
	auth, why, stopped := imageAuthority()
	close(release)
	if auth != journal.NoAuthority || stopped || !strings.Contains(why, "bitmap resync started") {
		t.Fatalf("during the resync: authority %d (%s), stopped %v; want none, not stopped", auth, why, stopped)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	p.secondary.before.Store(nil)
	second, _, _ := imageAuthority()
	if second == journal.NoAuthority || second <= first {
		t.Fatalf("after the resync: authority %d; want past the first one, %d", second, first)
	}
	p.drainAndCompare()

	// Verify, through the write intent log, and the node's own marks take it back.
	if err := p.mirror.MarkOutOfSync(roaring.BitmapOf(500), "test: a full resync"); err != nil {
		t.Fatal(err)
	}
	if auth, why, _ := imageAuthority(); auth != journal.NoAuthority || why != "test: a full resync" {
		t.Fatalf("after a foreign mark: authority %d (%s)", auth, why)
	}
	if err := p.mirror.Resync(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	if auth, _, _ := imageAuthority(); auth == journal.NoAuthority {
		t.Fatal("no authority after the resync that copied the foreign block")
	}
	p.drainAndCompare()
}

// brokenAtDevice fails the local writes at one offset.
type brokenAtDevice struct {
	blockdev.Device
	at int64
}

func (d *brokenAtDevice) WriteAt(b []byte, off int64) (int, error) {
	if off == d.at {
		return 0, errors.New("injected write error")
	}
	return d.Device.WriteAt(b, off)
}

// TestAsyncLocalWriteFailureTakesAuthority: a local write that fails after
// its append leaves a record the local disk does not match: the journal
// loses its authority before the write returns, and the next catch-up
// resyncs by bitmap, which makes the peer match this disk again.
func TestAsyncLocalWriteFailureTakesAuthority(t *testing.T) {
	p := newAsyncPair(t, asyncOptions{local: func(d blockdev.Device) blockdev.Device { return &brokenAtDevice{Device: d, at: 3 * 4096} }})
	p.connect()
	p.catchUp()
	if auth, _ := p.jrnl.Authority(); auth == journal.NoAuthority {
		t.Fatal("no authority after the first resync")
	}
	if _, err := p.mirror.WriteAt(content(1), 3*4096); err == nil {
		t.Fatal("the injected local write error was not returned")
	}
	if auth, why := p.jrnl.Authority(); auth != journal.NoAuthority || why != "a local write failed" {
		t.Fatalf("after a failed local write: authority %d (%s)", auth, why)
	}
	p.disconnect()
	p.connect()
	p.catchUp()
	if ms := p.mirror.Status(); ms.LastCatchUp != CatchUpBitmap || !strings.Contains(ms.FallbackReason, "a local write failed") {
		t.Fatalf("catch-up %q (%s); want bitmap because a local write failed", ms.LastCatchUp, ms.FallbackReason)
	}
	p.drainAndCompare()
}

// TestRedo writes a journal's records onto a device, oldest to newest: the
// newest record of each block wins, a trim reads back zeros, and doing it
// twice changes nothing. A record outside the device is an error.
func TestRedo(t *testing.T) {
	dir := t.TempDir()
	j, err := journal.Create(filepath.Join(dir, "journal"), journal.Options{Capacity: journal.MinCapacity * 4})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	const size = 1 << 20
	want := make([]byte, size)
	apply := func(r journal.Record) {
		t.Helper()
		if _, err := j.TryAppend(r); err != nil {
			t.Fatal(err)
		}
		switch r.Kind {
		case journal.KindWrite:
			copy(want[r.Offset:], r.Data)
		case journal.KindTrim:
			clear(want[r.Offset : r.Offset+r.Length])
		}
	}
	// Seq 1 is freed before the redo (the peer made it durable): only
	// it wrote block 2, which holds what the device held before.
	if _, err := j.TryAppend(journal.Record{Kind: journal.KindWrite, Offset: 0, Data: bytes.Repeat([]byte{1}, 3*4096)}); err != nil {
		t.Fatal(err)
	}
	if err := j.Truncate(1); err != nil {
		t.Fatal(err)
	}
	copy(want[2*4096:], bytes.Repeat([]byte{9}, 4096))
	apply(journal.Record{Kind: journal.KindWrite, Offset: 0, Data: bytes.Repeat([]byte{1}, 8192)})
	apply(journal.Record{Kind: journal.KindWrite, Offset: 4096, Data: bytes.Repeat([]byte{2}, 4096)})
	apply(journal.Record{Kind: journal.KindFlush})
	apply(journal.Record{Kind: journal.KindTrim, Offset: 0, Length: 4096})
	apply(journal.Record{Kind: journal.KindWrite, Offset: 65536, Data: bytes.Repeat([]byte{3}, 100)})
	disk := newFileSized(t, "disk", size)
	dev := openFileSized(t, disk, size)
	defer dev.Close()
	if _, err := dev.WriteAt(bytes.Repeat([]byte{9}, 4096), 2*4096); err != nil {
		t.Fatal(err)
	}
	for round := range 2 {
		n, err := Redo(context.Background(), j, dev)
		if err != nil || n != 5 {
			t.Fatalf("round %d: redid %d records, %v; want 5", round, n, err)
		}
		got := make([]byte, size)
		if _, err := dev.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("round %d: the device differs from the records", round)
		}
	}
	if _, err := j.TryAppend(journal.Record{Kind: journal.KindWrite, Offset: size, Data: []byte{1}}); err != nil {
		t.Fatal(err)
	}
	if _, err := Redo(context.Background(), j, dev); !errors.Is(err, ErrRedo) || !errors.Is(err, blockdev.ErrOutOfRange) {
		t.Fatalf("redo of a record past the device = %v; want ErrRedo, blockdev.ErrOutOfRange", err)
	}
}
