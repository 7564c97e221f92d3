package retrier

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"
	"github.com/ldmirror/ldmirror/ldapagent/retrier/wire"
)

// DefaultLDAPISocket is the socket of an ldapi:// URL without a path, as
// in Debian's slapd.
const DefaultLDAPISocket = "/var/run/slapd/ldapi"

const oidStartTLS = "1.3.6.1.4.1.1466.20037"

// endpoint is where an LDAP URL connects.
type endpoint struct {
	scheme  string // ldap, ldaps or ldapi
	network string // tcp or unix
	addr    string // host:port or the socket's path
	host    string // the host name, for TLS
}

// parseURL parses an ldap://, ldaps:// or ldapi:// URL. An ldapi URL
// names the socket's path in its host part with / escaped as %2F, which
// net/url rejects; it is unescaped here.
func parseURL(raw string) (endpoint, error) {
	if rest, ok := strings.CutPrefix(raw, "ldapi://"); ok {
		escaped, _, _ := strings.Cut(rest, "/")
		path, err := url.PathUnescape(escaped)
		if err != nil {
			return endpoint{}, err
		}
		if path == "" {
			path = DefaultLDAPISocket
		}
		return endpoint{scheme: "ldapi", network: "unix", addr: path}, nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return endpoint{}, err
	}
	e := endpoint{scheme: u.Scheme, network: "tcp", host: u.Hostname()}
	port := u.Port()
	switch u.Scheme {
	case "ldap":
		if port == "" {
			port = "389"
		}
	case "ldaps":
		if port == "" {
			port = "636"
		}
	default:
		return endpoint{}, fmt.Errorf("scheme must be ldap, ldaps or ldapi")
	}
	e.addr = net.JoinHostPort(e.host, port)
	return e, nil
}

// dial opens a connection to raw within ctx: TCP or a unix socket, TLS
// from the first byte (ldaps) or after StartTLS (ldap with
// Config.StartTLS). The server's certificate is checked against the name
// of the URL's host unless Config.TLS names another (issue 18, defect 2).
// A certificate that does not verify is a configuration error, never
// retried: the error matches ErrCertificate.
func dial(ctx context.Context, raw string, cfg *Config) (*conn, error) {
	e, err := parseURL(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %v", ErrConfig, raw, err)
	}
	d := net.Dialer{Timeout: cfg.DialTimeout}
	nc, err := d.DialContext(ctx, e.network, e.addr)
	if err != nil {
		return nil, ldap.NewError(ldap.ErrorNetwork, fmt.Errorf("dial %s: %w", raw, err))
	}
	lastID, sc := int64(0), nc
	switch {
	case e.scheme == "ldaps":
		sc, err = handshake(ctx, nc, e, cfg)
	case e.scheme == "ldap" && cfg.StartTLS:
		sc, err = startTLS(ctx, nc, e, cfg)
		lastID = 1
	}
	if err != nil {
		_ = nc.Close()
		if errors.Is(err, ErrCertificate) {
			return nil, fmt.Errorf("%s: %w", raw, err)
		}
		return nil, ldap.NewError(ldap.ErrorNetwork, fmt.Errorf("%s: %w", raw, err))
	}
	return newConn(sc, raw, lastID), nil
}

// handshake runs the TLS client handshake on nc within ctx.
func handshake(ctx context.Context, nc net.Conn, e endpoint, cfg *Config) (net.Conn, error) {
	tc := cfg.TLS.Clone()
	if tc == nil {
		tc = &tls.Config{}
	}
	if tc.ServerName == "" {
		tc.ServerName = e.host
	}
	c := tls.Client(nc, tc)
	if err := c.HandshakeContext(ctx); err != nil {
		var ve *tls.CertificateVerificationError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("%w: %w", ErrCertificate, err)
		}
		return nil, fmt.Errorf("tls handshake: %w", err)
	}
	return c, nil
}

// startTLS sends the StartTLS extended operation (RFC 4511 4.14) with
// message ID 1 on a new connection, then runs the TLS handshake.
func startTLS(ctx context.Context, nc net.Conn, e endpoint, cfg *Config) (net.Conn, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	op := ber.Encode(ber.ClassApplication, ber.TypeConstructed, ldap.ApplicationExtendedRequest, nil, "")
	op.AppendChild(ber.NewString(ber.ClassContext, ber.TypePrimitive, 0, oidStartTLS, ""))
	if _, err := nc.Write(wire.Append(nil, 1, op.Bytes(), nil)); err != nil {
		return nil, fmt.Errorf("starttls: %w", err)
	}
	// The server sends nothing after its response until the client's TLS
	// hello, so the buffer cannot hold bytes of the handshake.
	msg, err := wire.Read(bufio.NewReaderSize(nc, 64), 64<<10)
	if err != nil {
		return nil, fmt.Errorf("starttls: %w", err)
	}
	m, err := wire.Split(msg)
	if err != nil {
		return nil, fmt.Errorf("starttls: %w", err)
	}
	if m.ID != 1 || m.Op[0] != wire.TagExtendedResponse {
		return nil, fmt.Errorf("starttls: unexpected response (message %d, tag 0x%02x)", m.ID, m.Op[0])
	}
	if code, _, diag, err := wire.Result(m.Op); err != nil || code != 0 {
		return nil, fmt.Errorf("starttls refused: result %d: %s%v", code, diag, errOrNil(err))
	}
	_ = nc.SetDeadline(time.Time{})
	return handshake(ctx, nc, e, cfg)
}

func errOrNil(err error) string {
	if err == nil {
		return ""
	}
	return " " + err.Error()
}

// bind binds c as dn with password (simple authentication; anonymous with
// both empty) within ctx.
func (c *conn) bind(ctx context.Context, dn string, password []byte, idle time.Duration) error {
	op := bindOp(dn, password)
	x, err := c.send(ctx, op, nil)
	clear(op)
	if err != nil {
		return err
	}
	msg, err := c.recv(ctx, x, idle)
	c.finish(x, false)
	if err != nil {
		return err
	}
	return resultError(msg)
}

// bindOp encodes a simple BindRequest (RFC 4511 4.2) into a buffer the
// caller zeroes, which asn1-ber (strings all the way) cannot give.
func bindOp(dn string, password []byte) []byte {
	n := 3 + 1 + lenOfLen(len(dn)) + len(dn) + 1 + lenOfLen(len(password)) + len(password)
	b := make([]byte, 0, 1+lenOfLen(n)+n)
	b = append(b, 0x60)
	b = wire.AppendLength(b, n)
	b = append(b, 0x02, 0x01, 0x03) // version 3
	b = append(b, 0x04)
	b = wire.AppendLength(b, len(dn))
	b = append(b, dn...)
	b = append(b, 0x80) // [0] simple
	b = wire.AppendLength(b, len(password))
	return append(b, password...)
}

func lenOfLen(n int) int { return len(wire.AppendLength(nil, n)) }

// abandonOp encodes an AbandonRequest for message id (RFC 4511 4.11).
func abandonOp(id int64) []byte {
	p := ber.NewInteger(ber.ClassApplication, ber.TypePrimitive, ldap.ApplicationAbandonRequest, id, "")
	return p.Bytes()
}
