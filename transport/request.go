package transport

import (
	"encoding/binary"
	"fmt"
	"sync"
)

// Kind is the kind of a replicated request.
type Kind uint8

// Request kinds.
const (
	KindWrite Kind = iota + 1
	KindTrim
	KindFlush
	// KindGeneration carries the generation identifiers the secondary adopts
	// (in Generations) once it caught up with the primary.
	KindGeneration
	// KindChecksum asks for a digest of each block in [Offset,
	// Offset+Length), keyed with Key; the Handler answers with Reply,
	// ChecksumDigestSize bytes a block (see doc.go).
	KindChecksum
	// KindOutOfSync asks for the blocks this host knows may differ from
	// the primary (its own scoreboard and activity log, kept from when it
	// last wrote as primary); the Handler answers with Reply, a portable
	// roaring bitmap of block numbers.
	KindOutOfSync
	// KindProgress tells the target of a resync how far it got
	// (Request.Progress), so that the target's status can show it.
	KindProgress
	// KindStage asks the resync target's staging area to begin, commit
	// or report (StageOp, StageNeed); the Handler answers with Reply, a
	// StageReply.
	KindStage
)

func (k Kind) String() string {
	switch k {
	case KindWrite:
		return "write"
	case KindTrim:
		return "trim"
	case KindFlush:
		return "flush"
	case KindGeneration:
		return "generation"
	case KindChecksum:
		return "checksum"
	case KindOutOfSync:
		return "outofsync"
	case KindProgress:
		return "progress"
	case KindStage:
		return "stage"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Request is one replicated operation received from the primary.
type Request struct {
	Kind   Kind
	Seq    uint64
	Offset int64
	Length int64  // bytes written or trimmed; 0 for a flush
	Data   []byte // the data of a write; valid until Done
	// Generations of a KindGeneration request.
	Generations [4]uint64
	// Key of a KindChecksum request.
	Key [ChecksumKeySize]byte
	// Progress of a KindProgress request.
	Progress Progress
	// JournalID and JournalSeq place a write, trim or flush that came from
	// the primary's journal (async mode, a Journal frame); both are 0 for
	// a request that did not. The handler persists the highest sequence
	// number it applied with every earlier request, and answers a flush
	// with it (see the blockdev Replica).
	JournalID, JournalSeq uint64
	// Ordered asks the handler to apply the request after every earlier
	// request and before any later one: a journal catch-up sends its
	// records so, so that the peer's disk always holds a prefix of them.
	Ordered bool
	// StageOp and StageNeed are a KindStage request's operation and the
	// bytes a StageBegin expects to stage.
	StageOp   StageOp
	StageNeed int64

	sess *ServerSession
	buf  *[]byte
}

// Done acknowledges the request to the primary (err == nil) or reports that
// it failed. It must be called exactly once; the Request is invalid
// afterwards (it is reused for a later one).
func (r *Request) Done(err error) { r.Reply(nil, err) }

// Reply is Done with a body for the primary (the digests of a checksum
// request; for a flush, the handler's durable applied journal position).
func (r *Request) Reply(body []byte, err error) {
	r.sess.ack(r.Seq, body, err)
	putBuf(r.buf)
	*r = Request{}
	requestPool.Put(r)
}

// Handler applies requests on the secondary. The next request is read when
// Handle returns, so Handle must not block for long: it may apply a quick
// request in place (its ack then leaves with the others read in the same
// go) and a slow one on another goroutine, calling Done there.
type Handler interface {
	Handle(req *Request)
}

// Buffers for incoming write payloads, in two sizes so that small writes do
// not pin megabyte buffers.
const smallBuf = 64 << 10

var (
	smallPool = sync.Pool{New: func() any { b := make([]byte, smallBuf); return &b }}
	largePool = sync.Pool{New: func() any { b := make([]byte, MaxPayload); return &b }}
)

func getBuf(n uint32) *[]byte {
	if n <= smallBuf {
		return smallPool.Get().(*[]byte)
	}
	return largePool.Get().(*[]byte)
}

func putBuf(b *[]byte) {
	if b == nil {
		return
	}
	if cap(*b) == smallBuf {
		smallPool.Put(b)
	} else {
		largePool.Put(b)
	}
}

func parseRequest(kind Kind, hd Header, p []byte, size uint64) (Request, error) {
	req := Request{Kind: kind, Seq: hd.Seq}
	switch kind {
	case KindWrite:
		if len(p) < 9 {
			return Request{}, fmt.Errorf("%w: write frame of %d bytes", ErrMalformed, len(p))
		}
		req.Offset = int64(binary.BigEndian.Uint64(p))
		req.Data = p[8:]
		req.Length = int64(len(req.Data))
	case KindTrim:
		if len(p) != 16 {
			return Request{}, fmt.Errorf("%w: %s frame of %d bytes", ErrMalformed, kind, len(p))
		}
		req.Offset = int64(binary.BigEndian.Uint64(p))
		req.Length = int64(binary.BigEndian.Uint64(p[8:]))
	case KindChecksum:
		if len(p) != checksumRequestSize {
			return Request{}, fmt.Errorf("%w: checksum frame of %d bytes, want %d", ErrMalformed, len(p), checksumRequestSize)
		}
		req.Offset = int64(binary.BigEndian.Uint64(p))
		req.Length = int64(binary.BigEndian.Uint64(p[8:]))
		copy(req.Key[:], p[16:])
	case KindStage:
		return req, parseStage(&req, p)
	case KindFlush, KindOutOfSync:
		if len(p) != 0 {
			return Request{}, fmt.Errorf("%w: %s frame with %d payload bytes", ErrMalformed, kind, len(p))
		}
		return req, nil
	case KindGeneration:
		if len(p) != 32 {
			return Request{}, fmt.Errorf("%w: generation frame of %d bytes", ErrMalformed, len(p))
		}
		for i := range req.Generations {
			req.Generations[i] = binary.BigEndian.Uint64(p[8*i:])
		}
		return req, nil
	case KindProgress:
		var err error
		req.Progress, err = decodeProgress(p)
		return req, err
	}
	end := uint64(req.Offset) + uint64(req.Length)
	if req.Offset < 0 || req.Length <= 0 || end > size || end < uint64(req.Offset) {
		return Request{}, fmt.Errorf("%w: %s of %d bytes at offset %d outside the %d-byte volume", ErrMalformed, kind, req.Length, req.Offset, size)
	}
	return req, nil
}

// parseJournal decodes a Journal frame's payload into a write, trim or
// flush request.
func parseJournal(hd Header, p []byte, size uint64) (Request, error) {
	if len(p) < journalPrefix {
		return Request{}, fmt.Errorf("%w: journal frame of %d bytes", ErrMalformed, len(p))
	}
	req := Request{
		Kind:       Kind(p[16]),
		Seq:        hd.Seq,
		JournalID:  binary.BigEndian.Uint64(p[0:8]),
		JournalSeq: binary.BigEndian.Uint64(p[8:16]),
		Ordered:    p[17]&journalOrdered != 0,
		Offset:     int64(binary.BigEndian.Uint64(p[24:32])),
	}
	if p[17]&^journalOrdered != 0 || p[18]|p[19]|p[20]|p[21]|p[22]|p[23] != 0 {
		return Request{}, fmt.Errorf("%w: journal frame with unknown flags", ErrMalformed)
	}
	if req.JournalID == 0 || req.JournalSeq == 0 {
		return Request{}, fmt.Errorf("%w: journal frame without a journal position", ErrMalformed)
	}
	rest := p[journalPrefix:]
	switch req.Kind {
	case KindWrite:
		if len(rest) == 0 {
			return Request{}, fmt.Errorf("%w: journal write without data", ErrMalformed)
		}
		req.Data = rest
		req.Length = int64(len(rest))
	case KindTrim:
		if len(rest) != 8 {
			return Request{}, fmt.Errorf("%w: journal trim frame of %d bytes", ErrMalformed, len(p))
		}
		req.Length = int64(binary.BigEndian.Uint64(rest))
	case KindFlush:
		if len(rest) != 0 || req.Offset != 0 {
			return Request{}, fmt.Errorf("%w: journal flush with a range or data", ErrMalformed)
		}
		return req, nil
	default:
		return Request{}, fmt.Errorf("%w: journal frame of kind %s", ErrMalformed, req.Kind)
	}
	end := uint64(req.Offset) + uint64(req.Length)
	if req.Offset < 0 || req.Length <= 0 || end > size || end < uint64(req.Offset) {
		return Request{}, fmt.Errorf("%w: journal %s of %d bytes at offset %d outside the %d-byte volume", ErrMalformed, req.Kind, req.Length, req.Offset, size)
	}
	return req, nil
}
