package transport

import (
	"encoding/binary"
	"fmt"
)

// ProtocolVersion is the version of the wire protocol this package speaks.
// Version 2 changed the checksum request (a key) and its reply (keyed
// digests instead of CRC32C); version 3 added the Progress frame (a
// resync's progress, for its target); version 4 the Stage request, without
// which a resync target cannot keep its volume consistent (an older peer
// would apply a resync's blocks as they come). Both sides must speak the
// same version: a peer of another one is refused at the handshake.
const ProtocolVersion = 4

// maxNodeID bounds the node identity carried in Hello.
const maxNodeID = 64

// Hello opens a connection. Both sides send one.
type Hello struct {
	Version    uint16
	NodeID     string
	VolumeUUID [16]byte
	Size       uint64 // volume size in bytes
	BlockSize  uint32 // tracking granularity in bytes
	Epoch      uint64
	// Generations are the sender's generation identifiers (current, bitmap,
	// two history entries), which decide the resync direction.
	Generations [4]uint64
	Nonce       [32]byte
}

const helloFixed = 16 + 8 + 4 + 8 + 32 + 32 // after the node id

// maxHelloPayload is the largest Hello: the largest frame a handshake
// accepts before the peer is authenticated.
const maxHelloPayload = 3 + maxNodeID + helloFixed

// MarshalBinary encodes the Hello payload.
func (m *Hello) MarshalBinary() ([]byte, error) {
	if err := validNodeID(m.NodeID); err != nil {
		return nil, err
	}
	b := make([]byte, 0, 3+len(m.NodeID)+helloFixed)
	b = binary.BigEndian.AppendUint16(b, m.Version)
	b = append(b, byte(len(m.NodeID)))
	b = append(b, m.NodeID...)
	b = append(b, m.VolumeUUID[:]...)
	b = binary.BigEndian.AppendUint64(b, m.Size)
	b = binary.BigEndian.AppendUint32(b, m.BlockSize)
	b = binary.BigEndian.AppendUint64(b, m.Epoch)
	for _, g := range m.Generations {
		b = binary.BigEndian.AppendUint64(b, g)
	}
	b = append(b, m.Nonce[:]...)
	return b, nil
}

// UnmarshalBinary decodes a Hello payload.
func (m *Hello) UnmarshalBinary(b []byte) error {
	if len(b) < 3 {
		return fmt.Errorf("%w: hello of %d bytes", ErrMalformed, len(b))
	}
	m.Version = binary.BigEndian.Uint16(b)
	n := int(b[2])
	if n > maxNodeID || len(b) != 3+n+helloFixed {
		return fmt.Errorf("%w: hello of %d bytes with a %d-byte node id", ErrMalformed, len(b), n)
	}
	b = b[3:]
	m.NodeID = string(b[:n])
	if err := validNodeID(m.NodeID); err != nil {
		return fmt.Errorf("%w: hello: %w", ErrMalformed, err)
	}
	b = b[n:]
	copy(m.VolumeUUID[:], b)
	m.Size = binary.BigEndian.Uint64(b[16:])
	m.BlockSize = binary.BigEndian.Uint32(b[24:])
	m.Epoch = binary.BigEndian.Uint64(b[28:])
	for i := range m.Generations {
		m.Generations[i] = binary.BigEndian.Uint64(b[36+8*i:])
	}
	copy(m.Nonce[:], b[68:])
	return nil
}

// Ack status codes.
const (
	AckOK uint32 = iota
	AckIOError
	AckOutOfRange
	// AckTooLarge: the reply would not fit in one frame (ErrReplyTooLarge).
	AckTooLarge
)

// ackPayload encodes an Ack: a status code, then for a failure its message
// and for a success the reply (the digests of a checksum request).
func ackPayload(b []byte, status uint32, body []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, status)
	return append(b, body...)
}

func parseAck(b []byte) (uint32, []byte, error) {
	if len(b) < 4 {
		return 0, nil, fmt.Errorf("%w: ack of %d bytes", ErrMalformed, len(b))
	}
	return binary.BigEndian.Uint32(b), b[4:], nil
}

// Checksum requests: the primary sends a fresh random key with each one,
// and the reply holds one digest of ChecksumDigestSize bytes a block (see
// doc.go).
const (
	ChecksumKeySize    = 32
	ChecksumDigestSize = 16
	// MaxChecksumBlocks bounds the blocks one checksum request covers, so
	// that its reply (16 KiB at most) stays small.
	MaxChecksumBlocks = 1024
)

// checksumRequestSize is a checksum request's payload: offset, length, key.
const checksumRequestSize = 16 + ChecksumKeySize

// putChecksumRequest encodes a checksum request's payload into p, which
// holds checksumRequestSize bytes.
func putChecksumRequest(p []byte, off, n int64, key *[ChecksumKeySize]byte) {
	binary.BigEndian.PutUint64(p[0:8], uint64(off))
	binary.BigEndian.PutUint64(p[8:16], uint64(n))
	copy(p[16:checksumRequestSize], key[:])
}

// maxErrorText bounds the reason carried by an Error frame.
const maxErrorText = 1024

func errorPayload(msg string) []byte {
	if len(msg) > maxErrorText {
		msg = msg[:maxErrorText]
	}
	return []byte(msg)
}

// PositionSize is the size of a journal position in a flush's ack.
const PositionSize = 16

// AppendPosition appends a journal position, the journal's ID and a
// sequence number, as the ack of a flush carries the secondary's durable
// applied position.
func AppendPosition(b []byte, id, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(b, id), seq)
}

// ParsePosition reads a position AppendPosition wrote; ok is false if body
// is not one (a secondary in sync mode sends none).
func ParsePosition(body []byte) (id, seq uint64, ok bool) {
	if len(body) != PositionSize {
		return 0, 0, false
	}
	return binary.BigEndian.Uint64(body), binary.BigEndian.Uint64(body[8:]), true
}
