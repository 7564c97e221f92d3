package transport

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"
)

// Handshake errors. The side that detects one sends the peer an Error frame
// with the reason before it closes, so both logs say what is wrong.
var (
	ErrAuth           = errors.New("peer authentication failed (wrong shared secret?)")
	ErrVersion        = errors.New("protocol version mismatch")
	ErrVolumeMismatch = errors.New("peer has a different volume")
	ErrStaleEpoch     = errors.New("stale epoch")
	ErrPeerRefused    = errors.New("peer refused the connection")
	ErrUnexpected     = errors.New("unexpected frame")
)

// MinSecretLen is the shortest shared secret accepted.
const MinSecretLen = 16

// Config describes the local side of a peer connection.
type Config struct {
	NodeID     string
	Secret     []byte
	VolumeUUID [16]byte
	Size       uint64
	BlockSize  uint32
	Epoch      uint64
	// Generations returns the identifiers to send in each Hello (see
	// Hello.Generations); they change while the host runs. Nil sends zeros.
	Generations func() [4]uint64
	// Admit, if set, decides whether an authenticated peer with a matching
	// volume may connect (the secondary asks the control plane whether the
	// peer is the primary of the current epoch). Its error goes to the peer.
	Admit func(peer Hello) error
	// Window is the number of requests that may be outstanding on the link
	// (default 64).
	Window int
	// Timeout bounds the handshake, the wait for any single ack, and silence
	// from the peer (default 5 s). Pings keep an idle link alive.
	Timeout time.Duration
	Logger  *slog.Logger
}

func (c *Config) withDefaults() (Config, error) {
	out := *c
	if len(out.Secret) < MinSecretLen {
		return out, fmt.Errorf("shared secret is %d bytes, need at least %d", len(out.Secret), MinSecretLen)
	}
	if out.NodeID == "" || len(out.NodeID) > maxNodeID {
		return out, fmt.Errorf("node id must be 1 to %d bytes, got %q", maxNodeID, out.NodeID)
	}
	if out.Window <= 0 {
		out.Window = 64
	}
	if out.Timeout <= 0 {
		out.Timeout = 5 * time.Second
	}
	if out.Logger == nil {
		out.Logger = slog.Default()
	}
	return out, nil
}

// authLabel separates the two directions' MACs so a peer cannot reflect ours.
func authLabel(initiator bool) []byte {
	if initiator {
		return []byte("ldmirror-auth-v1 initiator")
	}
	return []byte("ldmirror-auth-v1 acceptor")
}

func authMAC(secret []byte, initiator bool, own, peer []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write(authLabel(initiator))
	m.Write(own)
	m.Write(peer)
	return m.Sum(nil)
}

// writeFrame sends one small control frame.
func writeFrame(w io.Writer, t Type, seq, epoch uint64, payload []byte) error {
	_, err := w.Write(AppendFrame(nil, Header{Type: t, Seq: seq, Epoch: epoch}, payload))
	return err
}

// refuse tells the peer why the connection closes and returns err.
func refuse(conn net.Conn, epoch uint64, err error) error {
	_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
	_ = writeFrame(conn, TypeError, 0, epoch, errorPayload(err.Error()))
	return err
}

// readControl reads a handshake frame of type want; an Error frame from the
// peer becomes ErrPeerRefused with its reason.
func readControl(fr *FrameReader, want Type) ([]byte, error) {
	h, p, err := fr.ReadFrame(nil)
	if err != nil {
		return nil, err
	}
	switch {
	case h.Type == TypeError:
		return nil, fmt.Errorf("%w: %s", ErrPeerRefused, p)
	case h.Type != want:
		return nil, fmt.Errorf("%w: %s during handshake, expected %s", ErrUnexpected, h.Type, want)
	}
	return p, nil
}

// handshake runs the Hello/Auth exchange on conn and checks that both sides
// mirror the same volume. It returns the peer's Hello.
func handshake(conn net.Conn, fr *FrameReader, cfg *Config, initiator bool) (Hello, error) {
	var peer Hello
	if err := conn.SetDeadline(time.Now().Add(cfg.Timeout)); err != nil {
		return peer, err
	}
	own := Hello{
		Version:    ProtocolVersion,
		NodeID:     cfg.NodeID,
		VolumeUUID: cfg.VolumeUUID,
		Size:       cfg.Size,
		BlockSize:  cfg.BlockSize,
		Epoch:      cfg.Epoch,
	}
	if cfg.Generations != nil {
		own.Generations = cfg.Generations()
	}
	if _, err := rand.Read(own.Nonce[:]); err != nil {
		return peer, err
	}
	ownBytes, err := own.MarshalBinary()
	if err != nil {
		return peer, err
	}
	if err := writeFrame(conn, TypeHello, 0, cfg.Epoch, ownBytes); err != nil {
		return peer, fmt.Errorf("send hello: %w", err)
	}
	peerBytes, err := readControl(fr, TypeHello)
	if err != nil {
		return peer, fmt.Errorf("read hello: %w", err)
	}
	if err := peer.UnmarshalBinary(peerBytes); err != nil {
		return peer, refuse(conn, cfg.Epoch, err)
	}
	if peer.Version != ProtocolVersion {
		return peer, refuse(conn, cfg.Epoch, fmt.Errorf("%w: local %d, peer %d; upgrade the host on version %d", ErrVersion, ProtocolVersion, peer.Version, min(ProtocolVersion, peer.Version)))
	}
	if bytes.Equal(own.Nonce[:], peer.Nonce[:]) {
		return peer, refuse(conn, cfg.Epoch, fmt.Errorf("%w: peer echoed our nonce", ErrAuth))
	}
	if err := writeFrame(conn, TypeAuth, 0, cfg.Epoch, authMAC(cfg.Secret, initiator, ownBytes, peerBytes)); err != nil {
		return peer, fmt.Errorf("send auth: %w", err)
	}
	mac, err := readControl(fr, TypeAuth)
	if err != nil {
		if errors.Is(err, ErrPeerRefused) {
			return peer, fmt.Errorf("%w (%w)", ErrAuth, err)
		}
		return peer, fmt.Errorf("read auth: %w", err)
	}
	if !hmac.Equal(mac, authMAC(cfg.Secret, !initiator, peerBytes, ownBytes)) {
		return peer, refuse(conn, cfg.Epoch, fmt.Errorf("%w: node %q", ErrAuth, peer.NodeID))
	}
	if err := checkVolume(&own, &peer); err != nil {
		return peer, refuse(conn, cfg.Epoch, err)
	}
	if cfg.Admit != nil {
		if err := cfg.Admit(peer); err != nil {
			return peer, refuse(conn, cfg.Epoch, err)
		}
	}
	// The acceptor confirms once it accepted everything, so a dialer learns
	// of a refusal from Dial rather than from its first write.
	if initiator {
		if _, err := readControl(fr, TypeReady); err != nil {
			return peer, fmt.Errorf("wait for the peer to accept: %w", err)
		}
	} else if err := writeFrame(conn, TypeReady, 0, cfg.Epoch, nil); err != nil {
		return peer, fmt.Errorf("send ready: %w", err)
	}
	return peer, conn.SetDeadline(time.Time{})
}

func checkVolume(own, peer *Hello) error {
	switch {
	case own.VolumeUUID != peer.VolumeUUID:
		return fmt.Errorf("%w: volume uuid local %x, peer %x", ErrVolumeMismatch, own.VolumeUUID, peer.VolumeUUID)
	case own.Size != peer.Size:
		return fmt.Errorf("%w: size local %d bytes, peer %d bytes", ErrVolumeMismatch, own.Size, peer.Size)
	case own.BlockSize != peer.BlockSize:
		return fmt.Errorf("%w: block size local %d bytes, peer %d bytes", ErrVolumeMismatch, own.BlockSize, peer.BlockSize)
	case own.NodeID == peer.NodeID:
		return fmt.Errorf("%w: both hosts use node ID %q; node IDs must differ", ErrVolumeMismatch, own.NodeID)
	}
	return nil
}

// socketBuffer holds a window of large frames, so a 1 MiB write does not
// wait for TCP buffer autotuning.
const socketBuffer = 4 << 20

// tuneConn disables Nagle (acks and small writes must leave at once) and
// sizes the socket buffers.
func tuneConn(conn net.Conn) {
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
		_ = tc.SetReadBuffer(socketBuffer)
		_ = tc.SetWriteBuffer(socketBuffer)
	}
}
