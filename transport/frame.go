package transport

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Frame geometry.
const (
	// Magic starts every frame ("LDM1").
	Magic uint32 = 0x4c444d31
	// HeaderSize is the fixed size of a frame header.
	HeaderSize = 32
	// MaxWrite is the largest data payload of one Write frame.
	MaxWrite = 1 << 20
	// MaxPayload is the largest payload of any frame: a maximal write plus
	// the 32-byte prefix of a journal frame.
	MaxPayload = MaxWrite + journalPrefix
)

// Type is the kind of a frame.
type Type uint8

// Frame types.
const (
	TypeHello Type = iota + 1
	TypeAuth
	TypeWrite
	TypeTrim
	TypeFlush
	TypeAck
	TypePing
	TypePong
	TypeError
	TypeGeneration
	TypeChecksum
	TypeReady
	TypeOutOfSync
	TypeJournal
	TypeProgress
	TypeStage
	typeEnd
)

var typeNames = [...]string{"", "hello", "auth", "write", "trim", "flush", "ack", "ping", "pong", "error", "generation", "checksum", "ready", "outofsync", "journal", "progress", "stage"}

func (t Type) String() string {
	if t > 0 && t < typeEnd {
		return typeNames[t]
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Errors a frame reader returns; a connection that sees one is closed.
var (
	ErrBadMagic      = errors.New("not an ldmirror frame (bad magic)")
	ErrChecksum      = errors.New("frame checksum mismatch")
	ErrFrameTooLarge = errors.New("frame larger than the maximum")
	ErrTruncated     = errors.New("truncated frame")
	ErrUnknownType   = errors.New("unknown frame type")
	ErrMalformed     = errors.New("malformed frame")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Header is a decoded frame header.
type Header struct {
	Type   Type
	Length uint32
	Seq    uint64
	Epoch  uint64
}

// putHeader encodes h into b (HeaderSize bytes) with a zero checksum field.
func putHeader(b []byte, h Header) {
	binary.BigEndian.PutUint32(b[0:4], Magic)
	b[4] = byte(h.Type)
	b[5], b[6], b[7] = 0, 0, 0
	binary.BigEndian.PutUint32(b[8:12], h.Length)
	binary.BigEndian.PutUint32(b[12:16], 0)
	binary.BigEndian.PutUint64(b[16:24], h.Seq)
	binary.BigEndian.PutUint64(b[24:32], h.Epoch)
}

// payloadSum is the checksum of a payload given in parts. The payload is
// summed before the header so that a sender can checksum data outside the
// lock that assigns sequence numbers.
func payloadSum(payload ...[]byte) uint32 {
	var sum uint32
	for _, p := range payload {
		sum = crc32.Update(sum, castagnoli, p)
	}
	return sum
}

// sealHeader completes the frame checksum (payload sum, then the header with
// a zero checksum field) and stores it in the header.
func sealHeader(b []byte, psum uint32) {
	binary.BigEndian.PutUint32(b[12:16], 0)
	binary.BigEndian.PutUint32(b[12:16], crc32.Update(psum, castagnoli, b[:HeaderSize]))
}

// AppendFrame appends one complete frame to dst.
func AppendFrame(dst []byte, h Header, payload []byte) []byte {
	h.Length = uint32(len(payload))
	start := len(dst)
	dst = append(dst, make([]byte, HeaderSize)...)
	putHeader(dst[start:], h)
	dst = append(dst, payload...)
	sealHeader(dst[start:start+HeaderSize], payloadSum(dst[start+HeaderSize:]))
	return dst
}

// FrameReader decodes frames from a stream.
type FrameReader struct {
	r     *bufio.Reader
	hdr   [HeaderSize]byte
	limit uint32
	// sealed: the stream is a TLS link, whose records TLS authenticates;
	// frames carry no checksum (see Session.enqueue) and none is checked.
	sealed bool
}

// NewFrameReader returns a reader of frames from r, of payloads up to
// MaxPayload.
func NewFrameReader(r io.Reader) *FrameReader {
	return &FrameReader{r: bufio.NewReaderSize(r, 64<<10), limit: MaxPayload}
}

// SetLimit sets the largest payload accepted from here on (at most
// MaxPayload): a handshake lowers it to a Hello's size until the peer is
// authenticated.
func (fr *FrameReader) SetLimit(n uint32) { fr.limit = min(n, MaxPayload) }

// ReadHeader reads and validates the next frame header. The payload must be
// read with ReadPayload before the next ReadHeader.
func (fr *FrameReader) ReadHeader() (Header, error) {
	if _, err := io.ReadFull(fr.r, fr.hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return Header{}, fmt.Errorf("%w: header cut short", ErrTruncated)
		}
		return Header{}, err
	}
	b := fr.hdr[:]
	if m := binary.BigEndian.Uint32(b[0:4]); m != Magic {
		return Header{}, fmt.Errorf("%w: got %#08x", ErrBadMagic, m)
	}
	h := Header{
		Type:   Type(b[4]),
		Length: binary.BigEndian.Uint32(b[8:12]),
		Seq:    binary.BigEndian.Uint64(b[16:24]),
		Epoch:  binary.BigEndian.Uint64(b[24:32]),
	}
	if h.Type == 0 || h.Type >= typeEnd {
		return Header{}, fmt.Errorf("%w: %d", ErrUnknownType, b[4])
	}
	if b[5] != 0 || b[6] != 0 || b[7] != 0 {
		return Header{}, fmt.Errorf("%w: reserved header bytes are not zero", ErrMalformed)
	}
	if h.Length > fr.limit {
		return Header{}, fmt.Errorf("%w: %s of %d bytes, maximum %d here", ErrFrameTooLarge, h.Type, h.Length, fr.limit)
	}
	return h, nil
}

// Buffered is the number of bytes received and not yet decoded: 0 means
// the next ReadHeader may wait for the peer.
func (fr *FrameReader) Buffered() int { return fr.r.Buffered() }

// ReadPayload reads the payload of the frame whose header was just read into
// buf, which must hold h.Length bytes, and verifies the checksum.
func (fr *FrameReader) ReadPayload(h Header, buf []byte) error {
	buf = buf[:h.Length]
	if _, err := io.ReadFull(fr.r, buf); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w: %s payload cut short", ErrTruncated, h.Type)
		}
		return err
	}
	if fr.sealed {
		return nil
	}
	want := binary.BigEndian.Uint32(fr.hdr[12:16])
	binary.BigEndian.PutUint32(fr.hdr[12:16], 0)
	if crc32.Update(payloadSum(buf), castagnoli, fr.hdr[:]) != want {
		return fmt.Errorf("%w: %s frame seq %d", ErrChecksum, h.Type, h.Seq)
	}
	return nil
}

// ReadFrame reads one whole frame, growing buf as needed, and returns the
// header and the payload (which aliases buf).
func (fr *FrameReader) ReadFrame(buf []byte) (Header, []byte, error) {
	h, err := fr.ReadHeader()
	if err != nil {
		return h, nil, err
	}
	if cap(buf) < int(h.Length) {
		buf = make([]byte, h.Length)
	}
	buf = buf[:h.Length]
	if err := fr.ReadPayload(h, buf); err != nil {
		return h, nil, err
	}
	return h, buf, nil
}
