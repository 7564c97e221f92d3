package transport

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"time"
)

// Handshake errors. The side that detects one sends the peer an Error frame
// with the reason before it closes, so both logs say what is wrong.
var (
	ErrAuth           = errors.New("peer authentication failed")
	ErrVersion        = errors.New("protocol version mismatch")
	ErrVolumeMismatch = errors.New("peer has a different volume")
	ErrStaleEpoch     = errors.New("stale epoch")
	ErrPeerRefused    = errors.New("peer refused the connection")
	// ErrNotReady is a refusal that clears by itself within moments: the
	// acceptor cannot decide yet (a restarted secondary that has not read
	// the control plane's state, or whose copy of it lags the dialer's
	// epoch). An Admit error wrapping it reaches the dialer as a refusal
	// that wraps it too, so that it retries soon rather than back off.
	ErrNotReady   = errors.New("not ready yet")
	ErrUnexpected = errors.New("unexpected frame")
	// ErrIdentity refuses a peer whose Hello names another node than its
	// certificate does.
	ErrIdentity = errors.New("peer identity mismatch")
	// ErrIntegrity is TLS refusing a record it could not authenticate:
	// bytes on the link were altered, dropped, reordered, replayed or
	// injected. The session ends; what it did not acknowledge stays dirty.
	ErrIntegrity = errors.New("integrity failure on the peer link (bytes altered, dropped, replayed or injected on the way)")
)

// MinSecretLen is the shortest shared secret accepted.
const MinSecretLen = 16

// DefaultMaxHandshakes is the default of Config.MaxHandshakes.
const DefaultMaxHandshakes = 16

// Config describes the local side of a peer connection.
type Config struct {
	NodeID string
	// ServerTLS (for Listen) and ClientTLS (for Dial) carry the link
	// inside TLS 1.3 with mutual authentication: both must require and
	// verify the peer's certificate (see package pki), and PeerID must
	// return the node ID the verified certificate names. The peer's Hello
	// must carry that ID.
	ServerTLS, ClientTLS *tls.Config
	PeerID               func(tls.ConnectionState) (string, error)
	// InsecurePlaintext runs the link without TLS: frames travel in clear
	// with a keyless CRC32C, so anyone on the path can read every block
	// and alter, drop or forge writes and acks. Only the handshake is
	// authenticated, by an HMAC over both Hellos keyed with Secret. For
	// measurement and tests; it must be asked for.
	InsecurePlaintext bool
	Secret            []byte
	VolumeUUID        [16]byte
	Size              uint64
	BlockSize         uint32
	Epoch             uint64
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
	// MaxHandshakes bounds the connections a Listener authenticates at
	// once (default DefaultMaxHandshakes); more are closed at once.
	MaxHandshakes int
	// AckLatency, if set, is told how long the peer took to acknowledge
	// each write or trim, from its submission (for metrics).
	AckLatency func(time.Duration)
	Logger     *slog.Logger
}

func (c *Config) withDefaults() (Config, error) {
	out := *c
	if err := validNodeID(out.NodeID); err != nil {
		return out, err
	}
	if out.InsecurePlaintext {
		if out.ServerTLS != nil || out.ClientTLS != nil {
			return out, errors.New("insecure plaintext link with a TLS configuration: choose one")
		}
		if len(out.Secret) < MinSecretLen {
			return out, fmt.Errorf("shared secret is %d bytes, need at least %d", len(out.Secret), MinSecretLen)
		}
	} else {
		if out.ServerTLS == nil && out.ClientTLS == nil || out.PeerID == nil {
			return out, errors.New("no TLS configuration and peer identity for the link (plaintext must be asked for)")
		}
		out.ServerTLS, out.ClientTLS = linkTLS(out.ServerTLS), linkTLS(out.ClientTLS)
	}
	if out.Window <= 0 {
		out.Window = 64
	}
	if out.Timeout <= 0 {
		out.Timeout = 5 * time.Second
	}
	if out.MaxHandshakes <= 0 {
		out.MaxHandshakes = DefaultMaxHandshakes
	}
	if out.Logger == nil {
		out.Logger = slog.Default()
	}
	return out, nil
}

// linkTLS is c for the data link: TLS 1.3 only, and full-size records from
// the first byte (dynamic record sizing helps a browser's first paint and
// costs a bulk link records and syscalls).
func linkTLS(c *tls.Config) *tls.Config {
	if c == nil {
		return nil
	}
	c = c.Clone()
	c.MinVersion = tls.VersionTLS13
	c.DynamicRecordSizingDisabled = true
	return c
}

// validNodeID is pki.ValidNodeID, repeated so that this package imports
// nothing of ldmirror's: 1 to 64 of A-Z a-z 0-9 . _ -.
func validNodeID(id string) error {
	if id == "" || len(id) > maxNodeID {
		return fmt.Errorf("node id %q: use 1 to %d characters of A-Z a-z 0-9 . _ -", id, maxNodeID)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("node id %q: use only A-Z a-z 0-9 . _ -", id)
		}
	}
	return nil
}

// secure runs the TLS handshake on raw (unless the link is plaintext) and
// returns the connection to speak frames on and the node ID the peer's
// verified certificate names ("" in plaintext).
func secure(ctx context.Context, raw net.Conn, cfg *Config, initiator bool) (net.Conn, string, error) {
	if cfg.InsecurePlaintext {
		return raw, "", nil
	}
	var tc *tls.Conn
	lc := newLinkConn(raw)
	if initiator {
		tc = tls.Client(lc, cfg.ClientTLS)
	} else {
		tc = tls.Server(lc, cfg.ServerTLS)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		return nil, "", fmt.Errorf("TLS handshake: %w", handshakeError(err))
	}
	id, err := cfg.PeerID(tc.ConnectionState())
	if err != nil {
		err = fmt.Errorf("%w: %w", ErrAuth, err)
		if !initiator {
			// The peer proved a certificate of our CA: it may learn why.
			err = refuse(tc, cfg.Epoch, err, maxHelloPayload)
		}
		return nil, "", err
	}
	return tc, id, nil
}

// linkError names a TLS failure for what it means on the link: a record
// that did not authenticate is ErrIntegrity, a refused certificate
// ErrAuth. Other errors (a reset, a timeout) are returned as they are.
func linkError(err error) error {
	if err == nil || errors.Is(err, ErrIntegrity) || errors.Is(err, ErrAuth) {
		return err
	}
	var rh tls.RecordHeaderError
	if errors.As(err, &rh) {
		if bytes.Equal(rh.RecordHeader[:4], []byte{0x4c, 0x44, 0x4d, 0x31}) {
			return fmt.Errorf("%w: the peer sends plaintext frames; both hosts must run with the same --insecure-plaintext-link setting: %w", ErrAuth, err)
		}
		return fmt.Errorf("%w: %w", ErrIntegrity, err)
	}
	var op *net.OpError
	if !errors.As(err, &op) || (op.Op != "local error" && op.Op != "remote error") {
		return err
	}
	// A TLS alert, sent or received. crypto/tls does not export the alert
	// type; its text is the alert's RFC 8446 name.
	switch strings.TrimPrefix(op.Err.Error(), "tls: ") {
	case "bad certificate", "unsupported certificate", "certificate revoked", "certificate expired",
		"certificate unknown", "unknown certificate authority", "access denied", "certificate required":
		return fmt.Errorf("%w: %w", ErrAuth, err)
	case "bad record MAC", "decryption failed", "record overflow", "unexpected message", "decode error", "decrypt error", "illegal parameter":
		return fmt.Errorf("%w: %w", ErrIntegrity, err)
	}
	return err
}

// handshakeError is linkError for a failed TLS handshake, where anything
// but a network error or a timeout is a certificate this side refused
// (the configuration's verification) and so ErrAuth.
func handshakeError(err error) error {
	if e := linkError(err); e != err {
		return e
	}
	var op *net.OpError
	if errors.As(err, &op) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrAuth, err)
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

// refuse tells the peer why the connection closes, in at most limit bytes
// (what the peer accepts at this stage), and returns err.
func refuse(conn net.Conn, epoch uint64, err error, limit int) error {
	msg := errorPayload(err.Error())
	if len(msg) > limit {
		msg = msg[:limit]
	}
	_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
	_ = writeFrame(conn, TypeError, 0, epoch, msg)
	return err
}

// readControl reads a handshake frame of type want; an Error frame from the
// peer becomes ErrPeerRefused with its reason.
func readControl(fr *FrameReader, want Type) ([]byte, error) {
	h, p, err := fr.ReadFrame(nil)
	if err != nil {
		return nil, linkError(err)
	}
	switch {
	case h.Type == TypeError:
		return nil, refusal(p)
	case h.Type != want:
		return nil, fmt.Errorf("%w: %s during handshake, expected %s", ErrUnexpected, h.Type, want)
	}
	return p, nil
}

// refusal is the error an Error frame with reason p stands for:
// ErrPeerRefused, and ErrNotReady too if the reason is that (its text
// leads: the frame carries text only).
func refusal(p []byte) error {
	if strings.HasPrefix(string(p), ErrNotReady.Error()) {
		return fmt.Errorf("%w: %w%s", ErrPeerRefused, ErrNotReady, strings.TrimPrefix(string(p), ErrNotReady.Error()))
	}
	return fmt.Errorf("%w: %s", ErrPeerRefused, p)
}

// handshake runs the Hello exchange on conn, authenticates the peer, and
// checks that both sides mirror the same volume. It returns the peer's
// Hello. certID is the node the peer's TLS certificate names; on a
// plaintext link it is "" and the peers prove the shared secret instead.
//
// Until the peer is authenticated the reader accepts frames of at most a
// Hello's size, so an unauthenticated client cannot make this host
// allocate or read more. On a plaintext link the acceptor checks the
// initiator's MAC before it sends its own, so one unauthenticated Hello
// yields nothing to guess the secret offline from.
func handshake(conn net.Conn, fr *FrameReader, cfg *Config, initiator bool, certID string) (Hello, error) {
	var peer Hello
	if err := conn.SetDeadline(time.Now().Add(cfg.Timeout)); err != nil {
		return peer, err
	}
	fr.SetLimit(maxHelloPayload)
	defer fr.SetLimit(MaxPayload)
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
		return peer, fmt.Errorf("send hello: %w", linkError(err))
	}
	peerBytes, err := readControl(fr, TypeHello)
	if err != nil {
		return peer, fmt.Errorf("read hello: %w", err)
	}
	preAuth := func(err error) error { return refuse(conn, cfg.Epoch, err, maxHelloPayload) }
	if err := peer.UnmarshalBinary(peerBytes); err != nil {
		return peer, preAuth(err)
	}
	if peer.Version != ProtocolVersion {
		return peer, preAuth(fmt.Errorf("%w: local %d, peer %d; upgrade the host on version %d", ErrVersion, ProtocolVersion, peer.Version, min(ProtocolVersion, peer.Version)))
	}
	if cfg.InsecurePlaintext {
		if err := macExchange(conn, fr, cfg, initiator, ownBytes, peerBytes, &peer); err != nil {
			return peer, err
		}
	} else if peer.NodeID != certID {
		return peer, refuse(conn, cfg.Epoch, fmt.Errorf("%w: the peer calls itself %q, its certificate names %q", ErrIdentity, peer.NodeID, certID), maxHelloPayload)
	}
	// The peer is authenticated: its refusals may explain themselves.
	fr.SetLimit(maxErrorText)
	if err := checkVolume(&own, &peer); err != nil {
		return peer, refuse(conn, cfg.Epoch, err, maxErrorText)
	}
	if cfg.Admit != nil {
		if err := cfg.Admit(peer); err != nil {
			return peer, refuse(conn, cfg.Epoch, err, maxErrorText)
		}
	}
	// The acceptor confirms once it accepted everything, so a dialer learns
	// of a refusal from Dial rather than from its first write.
	if initiator {
		if _, err := readControl(fr, TypeReady); err != nil {
			return peer, fmt.Errorf("wait for the peer to accept: %w", err)
		}
	} else if err := writeFrame(conn, TypeReady, 0, cfg.Epoch, nil); err != nil {
		return peer, fmt.Errorf("send ready: %w", linkError(err))
	}
	return peer, conn.SetDeadline(time.Time{})
}

// macExchange proves knowledge of the shared secret both ways on a
// plaintext link: the initiator first, and the acceptor only once it
// verified the initiator's MAC.
func macExchange(conn net.Conn, fr *FrameReader, cfg *Config, initiator bool, ownBytes, peerBytes []byte, peer *Hello) error {
	if bytes.Equal(ownBytes[len(ownBytes)-32:], peer.Nonce[:]) {
		return refuse(conn, cfg.Epoch, fmt.Errorf("%w: peer echoed our nonce", ErrAuth), maxHelloPayload)
	}
	send := func() error {
		if err := writeFrame(conn, TypeAuth, 0, cfg.Epoch, authMAC(cfg.Secret, initiator, ownBytes, peerBytes)); err != nil {
			return fmt.Errorf("send auth: %w", err)
		}
		return nil
	}
	if initiator {
		if err := send(); err != nil {
			return err
		}
	}
	mac, err := readControl(fr, TypeAuth)
	if err != nil {
		if errors.Is(err, ErrPeerRefused) {
			return fmt.Errorf("%w (wrong shared secret?) (%w)", ErrAuth, err)
		}
		return fmt.Errorf("read auth: %w", err)
	}
	if !hmac.Equal(mac, authMAC(cfg.Secret, !initiator, peerBytes, ownBytes)) {
		return refuse(conn, cfg.Epoch, fmt.Errorf("%w (wrong shared secret?): node %q", ErrAuth, peer.NodeID), maxHelloPayload)
	}
	if !initiator {
		return send()
	}
	return nil
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

// connState returns conn's TLS state if it is a TLS connection.
func connState(conn net.Conn) (tls.ConnectionState, bool) {
	if tc, ok := conn.(*tls.Conn); ok {
		return tc.ConnectionState(), true
	}
	return tls.ConnectionState{}, false
}

// security describes conn's protection for status.
func security(conn net.Conn) string {
	cs, ok := connState(conn)
	if !ok {
		return "plaintext (insecure: --insecure-plaintext-link)"
	}
	return tls.VersionName(cs.Version) + " " + tls.CipherSuiteName(cs.CipherSuite)
}

// securityAttrs describe conn's protection for a log line.
func securityAttrs(conn net.Conn) []any {
	cs, ok := connState(conn)
	if !ok {
		return []any{"tls", "off (insecure plaintext link)"}
	}
	attrs := []any{"tls", tls.VersionName(cs.Version) + " " + tls.CipherSuiteName(cs.CipherSuite)}
	if len(cs.PeerCertificates) > 0 {
		attrs = append(attrs, "peer_cert_serial", fmt.Sprintf("%x", cs.PeerCertificates[0].SerialNumber))
	}
	return attrs
}
