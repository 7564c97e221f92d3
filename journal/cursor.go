package journal

import (
	"context"
	"fmt"
)

// Cursor reads records in sequence order, from a starting sequence number
// on, waiting for records not yet written. One goroutine uses a Cursor.
type Cursor struct {
	j   *Journal
	seq uint64
	pos uint64
	hdr [HeaderSize]byte
}

// NewCursor returns a cursor whose first record is from, which must still be
// in the journal (ErrTruncated otherwise) and at most Next.
func (j *Journal) NewCursor(from uint64) (*Cursor, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return nil, ErrClosed
	}
	switch {
	case from < j.tailSeq:
		return nil, fmt.Errorf("%w: seq %d, the oldest held is %d", ErrTruncated, from, j.tailSeq)
	case from > j.nextSeq:
		return nil, fmt.Errorf("journal: seq %d is past the next one, %d", from, j.nextSeq)
	}
	c := &Cursor{j: j, seq: from, pos: j.headPos}
	if from < j.nextSeq {
		c.pos = j.positions.at(int(from - j.tailSeq))
	}
	return c, nil
}

// Seq is the sequence number of the record Next returns next.
func (c *Cursor) Seq() uint64 { return c.seq }

// Ready reports whether Next would return without waiting for an append
// (or a Release).
func (c *Cursor) Ready() bool {
	c.j.mu.Lock()
	defer c.j.mu.Unlock()
	return c.j.readyLocked(c.seq) || c.j.closed || c.j.err != nil
}

// Next returns the next record once it is written and not held (see
// AppendHeld), or ctx's error. A write's Data is read into buf, grown if it
// is too small, or is the buffer the record was written from (the
// handoff): then it is the caller's until it passes the record to
// Journal.Recycle. Next fails with ErrTruncated if the record was
// truncated before it was read.
func (c *Cursor) Next(ctx context.Context, buf []byte) (Record, error) {
	j := c.j
	j.mu.Lock()
	for !j.readyLocked(c.seq) {
		if j.closed {
			j.mu.Unlock()
			return Record{}, ErrClosed
		}
		if j.err != nil {
			err := j.err
			j.mu.Unlock()
			return Record{}, err
		}
		if j.appended == nil {
			j.appended = make(chan struct{})
		}
		ch := j.appended
		j.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return Record{}, ctx.Err()
		}
		j.mu.Lock()
	}
	if c.seq < j.tailSeq {
		j.mu.Unlock()
		return Record{}, fmt.Errorf("%w: seq %d", ErrTruncated, c.seq)
	}
	x, handed := j.handoff.take(c.seq)
	j.mu.Unlock()
	if handed {
		c.seq++
		c.pos += HeaderSize + uint64(len(x.rec.Data))
		x.rec.buf = x.buf
		return x.rec, nil
	}

	rec, size, rerr := c.read(buf)
	j.mu.Lock()
	truncated := c.seq < j.tailSeq
	j.mu.Unlock()
	if truncated { // its room may have been reused while it was read
		return Record{}, fmt.Errorf("%w: seq %d", ErrTruncated, c.seq)
	}
	if rerr != nil {
		return Record{}, rerr
	}
	c.seq++
	c.pos += size
	return rec, nil
}

func (c *Cursor) read(buf []byte) (Record, uint64, error) {
	j := c.j
	if err := j.readRing(c.hdr[:], c.pos); err != nil {
		return Record{}, 0, err
	}
	off := RingStart + int64(c.pos%j.capacity)
	h, err := decodeHeader(c.hdr[:])
	if err == nil && h.seq != c.seq {
		err = fmt.Errorf("sequence number %d, expected %d", h.seq, c.seq)
	}
	if err != nil {
		return Record{}, 0, fmt.Errorf("%w: record seq %d at file offset %d: %w", ErrCorrupt, c.seq, off, err)
	}
	n := h.dataLen()
	if int64(cap(buf)) < n {
		buf = make([]byte, n)
	}
	data := buf[:n]
	if err := j.readRing(data, c.pos+HeaderSize); err != nil {
		return Record{}, 0, err
	}
	if !verify(j.seed, &h, c.hdr[:], data) {
		return Record{}, 0, fmt.Errorf("%w: record seq %d at file offset %d: checksum mismatch", ErrCorrupt, c.seq, off)
	}
	rec := Record{Seq: h.seq, Kind: h.kind, Offset: h.offset, Length: h.length}
	if h.kind == KindWrite {
		rec.Data = data
	}
	return rec, h.size(), nil
}
