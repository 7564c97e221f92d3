// Package wire frames LDAP messages (RFC 4511 4.1.1) for the call retrier
// and its proxy: it reads one definite-length LDAPMessage under a size
// limit, splits a message into its message ID, protocolOp and controls
// without decoding them, and writes a protocolOp and controls under another
// message ID.
//
// That envelope and a few leading fields of a response (the result code,
// the DN of an entry) are all it reads; operations are encoded and decoded
// with github.com/go-asn1-ber/asn1-ber elsewhere. Handling only the
// envelope is what lets the proxy relay a server's response to its client
// with one copy instead of decoding and re-encoding it (docs/retrier.md).
package wire

import (
	"bufio"
	"errors"
	"fmt"
	"io"
)

// Errors of Read and Split.
var (
	ErrOversized = errors.New("message larger than the limit")
	ErrMalformed = errors.New("malformed message")
)

// Tags (identifier octets) of the LDAP messages the retrier and proxy look
// at (RFC 4511 4.2 to 4.14).
const (
	TagSequence          = 0x30
	TagBindResponse      = 0x61
	TagSearchRequest     = 0x63
	TagSearchEntry       = 0x64
	TagSearchDone        = 0x65
	TagModifyRequest     = 0x66
	TagModifyResponse    = 0x67
	TagAddRequest        = 0x68
	TagAddResponse       = 0x69
	TagDelRequest        = 0x4a
	TagDelResponse       = 0x6b
	TagModifyDNRequest   = 0x6c
	TagModifyDNResponse  = 0x6d
	TagCompareRequest    = 0x6e
	TagCompareResponse   = 0x6f
	TagSearchReference   = 0x73
	TagExtendedRequest   = 0x77
	TagExtendedResponse  = 0x78
	TagIntermediate      = 0x79
	TagControls          = 0xa0
	tagInteger           = 0x02
	tagEnumerated        = 0x0a
	firstChunk           = 16 << 10
	maxMessageID         = 1<<31 - 1
	maxHeader            = 6 // tag, 0x84 and four length bytes
	longFormLengthBytes  = 4
	shortFormLengthLimit = 0x80
)

// Read reads one LDAPMessage (a definite-length SEQUENCE) of at most limit
// bytes, header included. Memory grows with the bytes received, not with
// the length the header declares: a peer that declares a large message
// and sends little of it holds little memory.
func Read(r *bufio.Reader, limit int) ([]byte, error) {
	var hdr [maxHeader]byte
	tag, err := r.ReadByte()
	if err != nil {
		return nil, err
	}
	if tag != TagSequence {
		return nil, fmt.Errorf("%w: tag 0x%02x, want SEQUENCE", ErrMalformed, tag)
	}
	first, err := r.ReadByte()
	if err != nil {
		return nil, unexpectedEOF(err)
	}
	hdr[0], hdr[1] = tag, first
	n, length := 2, int(first)
	switch {
	case first == 0x80:
		return nil, fmt.Errorf("%w: indefinite length", ErrMalformed)
	case first&0x80 != 0:
		k := int(first & 0x7f)
		if k > longFormLengthBytes {
			return nil, fmt.Errorf("%w: %d length bytes", ErrOversized, k)
		}
		length = 0
		for range k {
			b, err := r.ReadByte()
			if err != nil {
				return nil, unexpectedEOF(err)
			}
			hdr[n] = b
			n++
			length = length<<8 | int(b)
		}
	}
	if length > limit-n {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrOversized, length+n, limit)
	}
	total := n + length
	msg := make([]byte, n, min(total, firstChunk))
	copy(msg, hdr[:n])
	for len(msg) < total {
		if len(msg) == cap(msg) {
			msg = append(make([]byte, 0, min(2*cap(msg), total)), msg...)
		}
		k, err := io.ReadAtLeast(r, msg[len(msg):cap(msg)], 1)
		msg = msg[:len(msg)+k]
		if err != nil && len(msg) < total {
			return nil, unexpectedEOF(err)
		}
	}
	return msg, nil
}

func unexpectedEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Message is an LDAPMessage split into its elements; Op and Controls are
// slices of the message.
type Message struct {
	ID int64
	// Op is the protocolOp element: tag, length and content.
	Op []byte
	// Controls is the [0] Controls element, or nil.
	Controls []byte
}

// Split splits an LDAPMessage read by Read.
func Split(msg []byte) (Message, error) {
	content, rest, err := Element(msg)
	if err != nil || len(rest) != 0 || msg[0] != TagSequence {
		return Message{}, fmt.Errorf("%w: not an LDAPMessage", ErrMalformed)
	}
	idContent, rest, err := Element(content)
	if err != nil || content[0] != tagInteger {
		return Message{}, fmt.Errorf("%w: no message ID", ErrMalformed)
	}
	id, ok := nonNegative(idContent)
	if !ok || id > maxMessageID {
		return Message{}, fmt.Errorf("%w: bad message ID", ErrMalformed)
	}
	_, after, err := Element(rest)
	if err != nil {
		return Message{}, fmt.Errorf("%w: no operation", ErrMalformed)
	}
	m := Message{ID: id, Op: rest[:len(rest)-len(after)]}
	if len(after) > 0 {
		_, tail, err := Element(after)
		if err != nil || len(tail) != 0 || after[0] != TagControls {
			return Message{}, fmt.Errorf("%w: bad controls", ErrMalformed)
		}
		m.Controls = after
	}
	return m, nil
}

// nonNegative decodes a minimal or padded two's-complement INTEGER content
// that is not negative.
func nonNegative(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 8 || b[0]&0x80 != 0 {
		return 0, false
	}
	var v int64
	for _, x := range b {
		v = v<<8 | int64(x)
	}
	return v, true
}

// Element splits b into the content of its first element (a single-byte
// tag, definite length) and the bytes after that element.
func Element(b []byte) (content, rest []byte, err error) {
	if len(b) < 2 || b[0]&0x1f == 0x1f {
		return nil, nil, fmt.Errorf("%w: short element", ErrMalformed)
	}
	l, i := int(b[1]), 2
	if l >= shortFormLengthLimit {
		k := l & 0x7f
		if k == 0 || k > longFormLengthBytes || len(b) < 2+k {
			return nil, nil, fmt.Errorf("%w: element length", ErrMalformed)
		}
		l = 0
		for _, x := range b[2 : 2+k] {
			l = l<<8 | int(x)
		}
		i += k
	}
	if l < 0 || len(b)-i < l {
		return nil, nil, fmt.Errorf("%w: element longer than its message", ErrMalformed)
	}
	return b[i : i+l], b[i+l:], nil
}

// AppendLength appends the definite-length encoding of n.
func AppendLength(dst []byte, n int) []byte {
	switch {
	case n < shortFormLengthLimit:
		return append(dst, byte(n))
	case n < 1<<8:
		return append(dst, 0x81, byte(n))
	case n < 1<<16:
		return append(dst, 0x82, byte(n>>8), byte(n))
	case n < 1<<24:
		return append(dst, 0x83, byte(n>>16), byte(n>>8), byte(n))
	}
	return append(dst, 0x84, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
}

// appendID appends the INTEGER element of a message ID (0 to 2^31-1).
func appendID(dst []byte, id int64) []byte {
	var b [5]byte
	n := 0
	for v := id; ; v >>= 8 {
		n++
		if v < 0x80 {
			break
		}
	}
	for i := n - 1; i >= 0; i-- {
		b[i] = byte(id)
		id >>= 8
	}
	dst = append(dst, tagInteger, byte(n))
	return append(dst, b[:n]...)
}

// Header appends the envelope that precedes op and controls in an
// LDAPMessage with message ID id: the SEQUENCE's tag and length and the
// message ID. Writing the header, op and controls one after the other
// gives the message without copying op.
func Header(dst []byte, id int64, opLen, controlsLen int) []byte {
	var idBuf [7]byte
	idElem := appendID(idBuf[:0], id)
	dst = append(dst, TagSequence)
	dst = AppendLength(dst, len(idElem)+opLen+controlsLen)
	return append(dst, idElem...)
}

// Append appends an LDAPMessage with id, op and controls (nil for none).
func Append(dst []byte, id int64, op, controls []byte) []byte {
	dst = Header(dst, id, len(op), len(controls))
	dst = append(dst, op...)
	return append(dst, controls...)
}

// Result returns the resultCode, matchedDN and diagnosticMessage of an
// LDAPResult-based response operation op (its first three elements).
func Result(op []byte) (code int, matchedDN, message []byte, err error) {
	content, _, err := Element(op)
	if err != nil {
		return 0, nil, nil, err
	}
	c, rest, err := Element(content)
	if err != nil || content[0] != tagEnumerated {
		return 0, nil, nil, fmt.Errorf("%w: no result code", ErrMalformed)
	}
	v, ok := nonNegative(c)
	if !ok || v > 1<<16 {
		return 0, nil, nil, fmt.Errorf("%w: result code", ErrMalformed)
	}
	if matchedDN, rest, err = Element(rest); err != nil {
		return 0, nil, nil, err
	}
	if message, _, err = Element(rest); err != nil {
		return 0, nil, nil, err
	}
	return int(v), matchedDN, message, nil
}

// First returns the content of the first element inside op: the DN of a
// SearchResultEntry or of most requests.
func First(op []byte) ([]byte, error) {
	content, _, err := Element(op)
	if err != nil {
		return nil, err
	}
	first, _, err := Element(content)
	return first, err
}
