package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ldmirror/ldmirror/internal/fileperm"
)

// Files names a node's key pair and the CA it trusts.
type Files struct {
	Cert string // the node's certificate, then any intermediates (PEM)
	Key  string // its private key (PEM); mode 0600
	CA   string // the CA certificate(s) peers must chain to (PEM)
}

// DirFiles is the layout `ldmirror pki issue` writes: dir/ca.crt,
// dir/<id>.crt and dir/<id>.key.
func DirFiles(dir, id string) Files {
	return Files{
		Cert: filepath.Join(dir, NodeCertFile(id)),
		Key:  filepath.Join(dir, NodeKeyFile(id)),
		CA:   filepath.Join(dir, CACertFile),
	}
}

// ErrReload refuses new files that name another node or role than the
// running one.
var ErrReload = errors.New("refusing the new certificate")

// material is one loaded generation of files.
type material struct {
	cert  tls.Certificate // Leaf set
	id    Identity
	roots *x509.CertPool
}

// Source is a node's TLS identity: its key pair and the CA pool, re-read
// on Reload. Its configurations read the current generation at every
// handshake, so established connections keep what they negotiated.
type Source struct {
	files Files
	mu    sync.Mutex // serializes Reload
	cur   atomic.Pointer[material]
}

// Load reads files: the key must be private to its owner, the certificate
// must match it, name one node (see IdentityOf), be valid now, carry the
// TLS server and client usages, and chain to the CA.
func Load(files Files) (*Source, error) {
	m, err := load(files)
	if err != nil {
		return nil, err
	}
	s := &Source{files: files}
	s.cur.Store(m)
	return s, nil
}

// Reload reads the files again and, if they load and name the same node
// in the same role, makes them current. On error the current pair stays.
func (s *Source) Reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := load(s.files)
	if err != nil {
		return err
	}
	if old := s.cur.Load(); m.id != old.id {
		return fmt.Errorf("%w: %s names %s, this process runs as %s (restart it to change identity)", ErrReload, s.files.Cert, m.id, old.id)
	}
	s.cur.Store(m)
	return nil
}

// Identity is the node the current certificate names.
func (s *Source) Identity() Identity { return s.cur.Load().id }

// Certificate is the current certificate.
func (s *Source) Certificate() *x509.Certificate { return s.cur.Load().cert.Leaf }

// Files are the files the source reads.
func (s *Source) Files() Files { return s.files }

func load(f Files) (*material, error) {
	if f.Cert == "" || f.Key == "" || f.CA == "" {
		return nil, errors.New("a certificate, its key and the CA certificate are all needed")
	}
	if err := fileperm.CheckPrivate(f.Key); err != nil {
		return nil, fmt.Errorf("TLS key: %w", err)
	}
	certPEM, err := os.ReadFile(f.Cert)
	if err != nil {
		return nil, fmt.Errorf("TLS certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(f.Key)
	if err != nil {
		return nil, fmt.Errorf("TLS key: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("TLS key pair %s, %s: %w", f.Cert, f.Key, err)
	}
	caPEM, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, fmt.Errorf("TLS CA: %w", err)
	}
	cas, err := parseCerts(caPEM)
	if err != nil {
		return nil, fmt.Errorf("TLS CA %s: %w", f.CA, err)
	}
	roots := x509.NewCertPool()
	for _, c := range cas {
		roots.AddCert(c)
	}
	leaf := cert.Leaf
	id, err := IdentityOf(leaf)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.Cert, err)
	}
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("%s: intermediate: %w", f.Cert, err)
		}
		inter.AddCert(c)
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			return nil, fmt.Errorf("%s does not verify against %s (expired, another CA, or without TLS server and client usage): %w", f.Cert, f.CA, err)
		}
	}
	return &material{cert: cert, id: id, roots: roots}, nil
}

// ServerConfig is the TLS configuration of a port that accepts nodes: TLS
// 1.3 only, a client certificate required and verified against the CA
// (for TLS client usage), no session resumption (every connection shows
// its certificate).
func (s *Source) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return &s.cur.Load().cert, nil
		},
		ClientAuth:             tls.RequireAnyClientCert,
		SessionTicketsDisabled: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return s.verify(cs, x509.ExtKeyUsageClientAuth)
		},
	}
}

// ClientConfig is the TLS configuration for dialing a node: TLS 1.3 only,
// this node's certificate, the server's verified against the CA (for TLS
// server usage) and required to name a node. Host names are not checked:
// nodes are identified by the node ID in their certificate, which the
// caller compares with the one it expects.
func (s *Source) ClientConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &s.cur.Load().cert, nil
		},
		// Verification is VerifyConnection's: the chain against the CA
		// pool current at this handshake, then the node identity.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			return s.verify(cs, x509.ExtKeyUsageServerAuth)
		},
	}
}

func (s *Source) verify(cs tls.ConnectionState, usage x509.ExtKeyUsage) error {
	if len(cs.PeerCertificates) == 0 {
		return fmt.Errorf("%w: the peer sent no certificate", ErrUntrusted)
	}
	m := s.cur.Load()
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	leaf := cs.PeerCertificates[0]
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: m.roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}, CurrentTime: time.Now()}); err != nil {
		return fmt.Errorf("%w: %q: %w", ErrUntrusted, leaf.Subject.String(), err)
	}
	_, err := IdentityOf(leaf)
	return err
}
