package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Errors about identities.
var (
	// ErrNodeID refuses a node ID outside [A-Za-z0-9._-]{1,64}.
	ErrNodeID = errors.New("invalid node id")
	// ErrNoIdentity refuses a certificate that names no ldmirror node, or
	// more than one.
	ErrNoIdentity = errors.New("certificate names no ldmirror node")
	// ErrRole refuses a peer whose certificate has the wrong role, such as
	// a witness on the data link.
	ErrRole = errors.New("certificate role not allowed here")
	// ErrUntrusted refuses a peer certificate that does not chain to the
	// configured CA, or that is expired or lacks the TLS usage.
	ErrUntrusted = errors.New("peer certificate not trusted")
)

// Role is what a node is allowed to be.
type Role string

// Roles.
const (
	RoleData    Role = "data"    // a data host: data link and cluster port
	RoleWitness Role = "witness" // a witness: the cluster port only
)

// URIScheme is the scheme of the SAN that names a node.
const URIScheme = "ldmirror"

// MaxNodeID bounds node IDs.
const MaxNodeID = 64

// Identity is the node a certificate names.
type Identity struct {
	ID   string
	Role Role
}

// Witness reports whether the identity is a witness's.
func (i Identity) Witness() bool { return i.Role == RoleWitness }

func (i Identity) String() string { return string(i.Role) + " " + i.ID }

// Describe names the role for people: "data host" or "witness".
func (r Role) Describe() string {
	if r == RoleData {
		return "data host"
	}
	return string(r)
}

// URI is the SAN that names id in role.
func URI(id string, role Role) *url.URL {
	return &url.URL{Scheme: URIScheme, Host: string(role), Path: "/" + id}
}

// ValidNodeID checks that id is 1 to 64 of A-Z a-z 0-9 . _ -: node IDs go
// into certificates, URIs, file names, logs and raft's configuration.
func ValidNodeID(id string) error {
	if id == "" || len(id) > MaxNodeID {
		return fmt.Errorf("%w %q: use 1 to %d characters of A-Z a-z 0-9 . _ -", ErrNodeID, id, MaxNodeID)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("%w %q: use only A-Z a-z 0-9 . _ - (byte %d is %q)", ErrNodeID, id, i, c)
		}
	}
	return nil
}

// ParseURI returns the identity an ldmirror URI SAN names. It accepts
// exactly the form URI writes: no user, port, query, fragment or trailing
// slash.
func ParseURI(u *url.URL) (Identity, error) {
	if u == nil || u.Scheme != URIScheme {
		return Identity{}, fmt.Errorf("%w: not an %s: URI", ErrNoIdentity, URIScheme)
	}
	role := Role(u.Host)
	if role != RoleData && role != RoleWitness {
		return Identity{}, fmt.Errorf("%w: %q: role %q (want %s or %s)", ErrNoIdentity, u.String(), u.Host, RoleData, RoleWitness)
	}
	if u.User != nil || u.Opaque != "" || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.RawPath != "" {
		return Identity{}, fmt.Errorf("%w: %q is not of the form %s://ROLE/NODE", ErrNoIdentity, u.String(), URIScheme)
	}
	id, ok := strings.CutPrefix(u.Path, "/")
	if !ok {
		return Identity{}, fmt.Errorf("%w: %q names no node", ErrNoIdentity, u.String())
	}
	if err := ValidNodeID(id); err != nil {
		return Identity{}, fmt.Errorf("%w: %q: %w", ErrNoIdentity, u.String(), err)
	}
	return Identity{ID: id, Role: role}, nil
}

// IdentityOf returns the node cert names: its one ldmirror URI SAN. Other
// SANs are ignored (a corporate CA may add its own); two ldmirror URIs are
// refused as ambiguous. It does not verify the certificate.
func IdentityOf(cert *x509.Certificate) (Identity, error) {
	var found []Identity
	for _, u := range cert.URIs {
		if u.Scheme != URIScheme {
			continue
		}
		id, err := ParseURI(u)
		if err != nil {
			return Identity{}, err
		}
		found = append(found, id)
	}
	switch len(found) {
	case 0:
		return Identity{}, fmt.Errorf("%w: no %s://ROLE/NODE URI among its subject alternative names (subject %q)", ErrNoIdentity, URIScheme, cert.Subject.String())
	case 1:
		return found[0], nil
	}
	return Identity{}, fmt.Errorf("%w: %d ldmirror URIs, want one", ErrNoIdentity, len(found))
}

// PeerIdentity returns the node the peer's certificate names in a
// connection whose handshake verified it (with a Source's configuration).
func PeerIdentity(cs tls.ConnectionState) (Identity, error) {
	if len(cs.PeerCertificates) == 0 {
		return Identity{}, fmt.Errorf("%w: the peer sent no certificate", ErrUntrusted)
	}
	return IdentityOf(cs.PeerCertificates[0])
}

// DataHostID is PeerIdentity for the data link: only a data host may open
// a session there, so a witness's certificate is refused.
func DataHostID(cs tls.ConnectionState) (string, error) {
	id, err := PeerIdentity(cs)
	if err != nil {
		return "", err
	}
	if id.Role != RoleData {
		return "", fmt.Errorf("%w: the peer's certificate names %s, and a %s may not open a data-link session", ErrRole, id, id.Role)
	}
	return id.ID, nil
}
