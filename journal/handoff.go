package journal

import "sync"

// The handoff gives the shipper the buffer a write record was written
// from, so that a cursor that reaches the record soon after its append
// need not read it back from the ring and check its CRC: the buffer holds
// the bytes that were checksummed and written, and never left memory. A
// record the handoff does not hold (it was over budget, or the cursor
// started after it was dropped) is read from the ring as before.

// bufClasses are the sizes of the pooled record buffers: a header and
// 4 KiB, 64 KiB or 1 MiB of data. A larger record is written from the
// caller's data, the header separately, and not handed off.
var bufClasses = [...]int{HeaderSize + 4<<10, HeaderSize + 64<<10, HeaderSize + 1<<20}

// handoffBudget bounds the bytes of buffers the handoff holds: enough for
// the records a shipper keeps up with, not a copy of the ring.
const handoffBudget = 32 << 20

// bufPool is a pool of record buffers per size class.
type bufPool [len(bufClasses)]sync.Pool

func (p *bufPool) init() {
	for i, n := range bufClasses {
		p[i].New = func() any { b := make([]byte, n); return &b }
	}
}

// get returns a buffer of at least n bytes, or nil if n is over the
// largest class.
func (p *bufPool) get(n int) *[]byte {
	for i, c := range bufClasses {
		if n <= c {
			return p[i].Get().(*[]byte)
		}
	}
	return nil
}

func (p *bufPool) put(bp *[]byte) {
	for i, c := range bufClasses {
		if cap(*bp) == c {
			*bp = (*bp)[:c]
			p[i].Put(bp)
			return
		}
	}
}

// handed is a record in the handoff.
type handed struct {
	buf *[]byte
	rec Record // Data points into buf
}

// handoff holds recently written records by sequence number (under
// Journal.mu).
type handoff struct {
	recs   map[uint64]handed
	bytes  int
	budget int // handoffBudget; 0 turns the handoff off (benchmarks)
}

// room reports whether a buffer of n bytes may be handed off now. j.mu is
// held.
func (h *handoff) room(n int) bool { return h.bytes+n <= h.budget }

func (h *handoff) add(seq uint64, bp *[]byte, rec Record) {
	if h.recs == nil {
		h.recs = make(map[uint64]handed)
	}
	rec.Seq = seq
	h.recs[seq] = handed{buf: bp, rec: rec}
	h.bytes += cap(*bp)
}

// take removes and returns seq's record.
func (h *handoff) take(seq uint64) (handed, bool) {
	x, ok := h.recs[seq]
	if ok {
		delete(h.recs, seq)
		h.bytes -= cap(*x.buf)
	}
	return x, ok
}

// dropBelow removes the records before seq (truncated, or passed by the
// cursor) and returns their buffers.
func (h *handoff) dropBelow(seq uint64) []*[]byte {
	var bufs []*[]byte
	for s, x := range h.recs {
		if s < seq {
			delete(h.recs, s)
			h.bytes -= cap(*x.buf)
			bufs = append(bufs, x.buf)
		}
	}
	return bufs
}

// Handed reports whether rec's Data is a handed-off buffer, which the
// caller gives back with Journal.Recycle, rather than the buffer it passed
// to Cursor.Next.
func (r Record) Handed() bool { return r.buf != nil }

// Recycle gives back the buffer of a record a cursor returned, once its
// Data is no longer used. It is a no-op for a record read from the ring
// into the caller's buffer.
func (j *Journal) Recycle(rec Record) {
	if rec.buf != nil {
		j.bufs.put(rec.buf)
	}
}
