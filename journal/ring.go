package journal

import (
	"encoding/binary"
	"fmt"
)

// writeRecord writes record r as seq at ring position pos. A record of
// up to 64 KiB of data, or up to 1 MiB if it is to be handed off, is
// written from a pooled buffer with one system call, and the buffer,
// holding the header and the data, is returned to the caller; a larger one
// is written in two, from r.Data, sparing the copy.
func (j *Journal) writeRecord(seq, pos uint64, r *Record, handoff bool) (*[]byte, error) {
	var hdr [HeaderSize]byte
	putHeader(hdr[:], r.Kind, j.open, seq, r.Offset, r.Length)
	sum := recordSum(j.seed, hdr[:], r.Data)
	binary.BigEndian.PutUint32(hdr[12:16], sum)
	n := HeaderSize + len(r.Data)
	var bp *[]byte
	if n <= bufClasses[1] || handoff {
		bp = j.bufs.get(n)
	}
	if bp == nil {
		if err := j.writeRing(hdr[:], pos); err != nil {
			return nil, err
		}
		return nil, j.writeRing(r.Data, pos+HeaderSize)
	}
	b := (*bp)[:n]
	copy(b, hdr[:])
	copy(b[HeaderSize:], r.Data)
	return bp, j.writeRing(b, pos)
}

// writeRing writes b at logical ring position pos, wrapping at the end.
func (j *Journal) writeRing(b []byte, pos uint64) error {
	phys := pos % j.capacity
	n := min(uint64(len(b)), j.capacity-phys)
	if _, err := j.f.WriteAt(b[:n], RingStart+int64(phys)); err != nil {
		return err
	}
	if n < uint64(len(b)) {
		_, err := j.f.WriteAt(b[n:], RingStart)
		return err
	}
	return nil
}

// readRing reads b from logical ring position pos, wrapping at the end.
func (j *Journal) readRing(b []byte, pos uint64) error {
	phys := pos % j.capacity
	n := min(uint64(len(b)), j.capacity-phys)
	if _, err := j.f.ReadAt(b[:n], RingStart+int64(phys)); err != nil {
		return fmt.Errorf("journal read at file offset %d: %w", RingStart+int64(phys), err)
	}
	if n < uint64(len(b)) {
		if _, err := j.f.ReadAt(b[n:], RingStart); err != nil {
			return fmt.Errorf("journal read at file offset %d: %w", RingStart, err)
		}
	}
	return nil
}

// posRing is a FIFO of ring positions that grows by doubling.
type posRing struct {
	buf  []uint64
	head int
	n    int
}

func (r *posRing) push(v uint64) {
	if r.n == len(r.buf) {
		nb := make([]uint64, max(64, 2*len(r.buf)))
		for i := range r.n {
			nb[i] = r.buf[(r.head+i)&(len(r.buf)-1)]
		}
		r.buf, r.head = nb, 0
	}
	r.buf[(r.head+r.n)&(len(r.buf)-1)] = v
	r.n++
}

func (r *posRing) at(i int) uint64 { return r.buf[(r.head+i)&(len(r.buf)-1)] }

func (r *posRing) drop(k int) {
	if k <= 0 {
		return
	}
	r.head = (r.head + k) & (len(r.buf) - 1)
	r.n -= k
}
