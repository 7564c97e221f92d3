package replica

import (
	"bytes"
	"encoding/binary"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/ldmirror/ldmirror/journal"
	"github.com/ldmirror/ldmirror/transport"
)

func (h *requestHarness) journal(seq uint64, op transport.JournalOp) {
	c, err := h.sess.SubmitJournal(op)
	h.track(seq, c, err)
}

// TestReplicaOrderedRequestsRunAlone: journal records sent for a catch-up
// (Ordered) are applied one at a time, in sequence, after every earlier
// request, even one they do not overlap; without the flag the same records
// do not wait for it.
func TestReplicaOrderedRequestsRunAlone(t *testing.T) {
	for _, ordered := range []bool{true, false} {
		dev := newGatedDevice(1 << 20)
		r := New(dev, 4096, nil)
		h := newRequestHarness(t, r)
		// A slow request first, which none of the records overlaps: a
		// checksum held in its read.
		release := dev.gate(0)
		sums, err := h.sess.SubmitChecksum(0, 4096, new([transport.ChecksumKeySize]byte))
		h.track(1, sums, err)
		h.waitFor(t, func() bool { return dev.readsHeld.Load() == 1 })
		for i := range 4 {
			h.journal(uint64(i+2), transport.JournalOp{ID: 3, Seq: uint64(10 + i), Kind: transport.KindWrite, Ordered: ordered, Offset: int64(i+1) * 65536, Data: bytes.Repeat([]byte{byte(i)}, 4096)})
		}
		if ordered {
			h.waitFor(t, func() bool { return r.Status().Pending == 5 })
			if h.acked(2) || h.acked(3) || h.acked(4) || h.acked(5) {
				t.Fatal("an ordered record was applied while an earlier request was held")
			}
		} else {
			h.waitAcked(t, 2, 3, 4, 5)
		}
		close(release)
		h.waitAcked(t, 1, 2, 3, 4, 5)
		r.Wait()
		if ordered && (dev.maxRunning.Load() != 1 || len(dev.order) != 4 || dev.order[0] != 65536 || dev.order[3] != 4*65536) {
			t.Fatalf("ordered apply: order %v, %d at once", dev.order, dev.maxRunning.Load())
		}
		if st := r.Status(); st.JournalID != 3 || st.JournalApplied != 13 {
			t.Fatalf("ordered=%v: status %+v, want journal 3 applied through 13", ordered, st)
		}
	}
}

// TestReplicaPersistsAppliedPosition: a flush makes the applied journal
// position durable in the AppliedFile and answers with it; a new Replica
// on the same file starts from it.
func TestReplicaPersistsAppliedPosition(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal.applied")
	af, err := journal.OpenAppliedFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer af.Close()
	dev := newGatedDevice(1 << 20)
	r := New(dev, 4096, nil)
	r.SetAppliedFile(af)
	h := newRequestHarness(t, r)
	for i := range uint64(5) {
		h.journal(i+1, transport.JournalOp{ID: 8, Seq: 40 + i, Kind: transport.KindWrite, Offset: int64(i) * 4096, Data: make([]byte, 4096)})
	}
	h.write(6, 1<<19, make([]byte, 4096)) // a resync write: no journal position
	c, err := h.sess.SubmitFlush()
	if err != nil {
		t.Fatal(err)
	}
	reply, err := c.WaitReply()
	if err != nil {
		t.Fatal(err)
	}
	if len(reply) != 16 || binary.BigEndian.Uint64(reply) != 8 || binary.BigEndian.Uint64(reply[8:]) != 44 {
		t.Fatalf("flush reply %x, want journal 8 seq 44", reply)
	}
	if p := af.Position(); p != (journal.Position{ID: 8, Seq: 44}) {
		t.Fatalf("file holds %+v", p)
	}
	dev.mu.Lock()
	flushes := dev.flushes
	dev.mu.Unlock()
	if st := r.Status(); st.JournalDurable != 44 || flushes != 1 {
		t.Fatalf("status %+v, %d device flushes", st, flushes)
	}
	// A journaled flush counts itself.
	c, err = h.sess.SubmitJournal(transport.JournalOp{ID: 8, Seq: 45, Kind: transport.KindFlush})
	if err != nil {
		t.Fatal(err)
	}
	if reply, err = c.WaitReply(); err != nil || binary.BigEndian.Uint64(reply[8:]) != 45 {
		t.Fatalf("journal flush reply %x, %v", reply, err)
	}
	r2 := New(newGatedDevice(1<<20), 4096, nil)
	r2.SetAppliedFile(af)
	if st := r2.Status(); st.JournalID != 8 || st.JournalDurable != 45 || st.JournalApplied != 45 {
		t.Fatalf("a new replica on the file: %+v", st)
	}
}

// TestReplicaPersistAtStop: records applied since the last flush are made
// durable, with their position, when the secondary stops (Persist), so the
// next catch-up does not replay them over a disk that holds them.
func TestReplicaPersistAtStop(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal.applied")
	af, err := journal.OpenAppliedFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer af.Close()
	dev := newGatedDevice(1 << 20)
	r := New(dev, 4096, nil)
	r.SetAppliedFile(af)
	if err := r.Persist(); err != nil || af.Position() != (journal.Position{}) {
		t.Fatalf("persist with nothing applied: %+v, %v", af.Position(), err)
	}
	h := newRequestHarness(t, r)
	for i := range uint64(3) {
		h.journal(i+1, transport.JournalOp{ID: 5, Seq: 70 + i, Kind: transport.KindWrite, Offset: int64(i) * 4096, Data: make([]byte, 4096)})
	}
	h.waitAcked(t, 1, 2, 3)
	r.Wait()
	if p := af.Position(); p != (journal.Position{}) {
		t.Fatalf("before the stop the file holds %+v; want nothing (no flush yet)", p)
	}
	if err := r.Persist(); err != nil {
		t.Fatal(err)
	}
	dev.mu.Lock()
	flushes := dev.flushes
	dev.mu.Unlock()
	if p := af.Position(); p != (journal.Position{ID: 5, Seq: 72}) || flushes != 1 {
		t.Fatalf("after Persist the file holds %+v after %d device flushes; want journal 5 seq 72 after 1", p, flushes)
	}
}

// TestReplicaPositionMovesAfterReattach: a journal record that the failing
// disk refused holds the applied position; once attach-disk put a disk
// back, the records of the primary's next session move it again.
func TestReplicaPositionMovesAfterReattach(t *testing.T) {
	dev := failingDevice{gatedDevice: newGatedDevice(1 << 20), at: 8192, err: syscall.ENOSPC}
	r := New(dev, 4096, nil)
	h := newRequestHarness(t, r)
	h.journal(1, transport.JournalOp{ID: 5, Seq: 10, Kind: transport.KindWrite, Offset: 0, Data: make([]byte, 4096)})
	h.journal(2, transport.JournalOp{ID: 5, Seq: 11, Kind: transport.KindWrite, Offset: 8192, Data: make([]byte, 4096)})
	h.waitFor(t, func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		return len(h.done) == 2
	})
	if st := r.Status(); st.JournalApplied != 10 {
		t.Fatalf("after the refused record: applied %d, want 10", st.JournalApplied)
	}
	r.Reattach(newGatedDevice(1 << 20))
	h.journal(3, transport.JournalOp{ID: 5, Seq: 20, Kind: transport.KindWrite, Offset: 16384, Data: make([]byte, 4096)})
	h.waitAcked(t, 3)
	if st := r.Status(); st.JournalApplied != 20 {
		t.Fatalf("after Reattach and record 20: applied %d, want 20 (stuck at the failure)", st.JournalApplied)
	}
}
