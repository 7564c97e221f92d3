package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/ldmirror/ldmirror/internal/fileperm"
)

// Files in a pki directory, as `ldmirror pki init` and `pki issue` write
// them; every one has mode 0600 and the directory 0700.
const (
	CAKeyFile  = "ca.key"
	CACertFile = "ca.crt"
)

// NodeCertFile and NodeKeyFile are the names of node id's certificate and
// key in a pki directory.
func NodeCertFile(id string) string { return id + ".crt" }

// NodeKeyFile is the name of node id's private key in a pki directory.
func NodeKeyFile(id string) string { return id + ".key" }

// ErrExists refuses to create a CA over an existing one.
var ErrExists = errors.New("already exists")

// Validity defaults.
const (
	DefaultCAValidity   = 10 * 365 * 24 * time.Hour
	DefaultNodeValidity = 2 * 365 * 24 * time.Hour
	// backdate covers clocks a little behind the issuer's.
	backdate = 5 * time.Minute
)

// InitCA creates a certificate authority for one pair in dir: a new P-256
// key (ca.key) and a self-signed CA certificate (ca.crt) valid for
// validity. dir is created with mode 0700, or must already have no group
// or other permissions; an existing CA is never overwritten.
func InitCA(dir, name string, validity time.Duration) (*x509.Certificate, error) {
	if err := privateDir(dir); err != nil {
		return nil, err
	}
	for _, f := range []string{CAKeyFile, CACertFile} {
		if _, err := os.Lstat(filepath.Join(dir, f)); err == nil {
			return nil, fmt.Errorf("%s: %w (a CA is created once; issue node certificates with it)", filepath.Join(dir, f), ErrExists)
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	if name == "" {
		name = "ldmirror CA"
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	cert, der, err := sign(tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	if err := writeNew(dir, CAKeyFile, keyPEM); err != nil {
		return nil, err
	}
	if err := writeNew(dir, CACertFile, encodeCert(der)); err != nil {
		return nil, err
	}
	return cert, nil
}

// Issue makes a new P-256 key for node id in role and a certificate for it
// signed by the CA in dir, valid for validity, and writes them as
// dir/<id>.key and dir/<id>.crt (mode 0600). An existing pair is replaced,
// each file atomically (key first): that is rotation; a running daemon
// takes the new pair on SIGHUP.
func Issue(dir, id string, role Role, validity time.Duration) (*x509.Certificate, error) {
	if err := ValidNodeID(id); err != nil {
		return nil, err
	}
	if role != RoleData && role != RoleWitness {
		return nil, fmt.Errorf("role %q: want %s or %s", role, RoleData, RoleWitness)
	}
	if err := fileperm.CheckPrivateDir(dir); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no CA in %s (create one with ldmirror pki init): %w", dir, err)
	} else if err != nil {
		return nil, err
	}
	ca, caKey, err := loadCA(dir)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	notAfter := now.Add(validity)
	if notAfter.After(ca.NotAfter) {
		notAfter = ca.NotAfter // a certificate cannot outlive its issuer
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: id, OrganizationalUnit: []string{string(role)}},
		NotBefore:   now.Add(-backdate),
		NotAfter:    notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:        []*url.URL{URI(id, role)},
	}
	cert, der, err := sign(tmpl, ca, key.Public(), caKey)
	if err != nil {
		return nil, err
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	if err := writeReplace(dir, NodeKeyFile(id), keyPEM); err != nil {
		return nil, err
	}
	if err := writeReplace(dir, NodeCertFile(id), encodeCert(der)); err != nil {
		return nil, err
	}
	return cert, nil
}

// privateDir creates dir with mode 0700, or checks that the existing one
// grants nothing to its group or others.
func privateDir(dir string) error {
	err := os.Mkdir(dir, 0o700)
	if errors.Is(err, fs.ErrExist) {
		return fileperm.CheckPrivateDir(dir)
	}
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
			return err
		}
		err = os.Mkdir(dir, 0o700)
	}
	if err != nil {
		return err
	}
	return os.Chmod(dir, 0o700) // whatever the umask
}

func loadCA(dir string) (*x509.Certificate, crypto.Signer, error) {
	keyPath, certPath := filepath.Join(dir, CAKeyFile), filepath.Join(dir, CACertFile)
	if err := fileperm.CheckPrivate(keyPath); errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("no CA in %s (create one with ldmirror pki init): %w", dir, err)
	} else if err != nil {
		return nil, nil, fmt.Errorf("CA key: %w", err)
	}
	kb, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, nil, err
	}
	key, err := parseKey(kb)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", keyPath, err)
	}
	cb, err := os.ReadFile(certPath)
	if err != nil {
		return nil, nil, err
	}
	certs, err := parseCerts(cb)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", certPath, err)
	}
	ca := certs[0]
	if !ca.IsCA {
		return nil, nil, fmt.Errorf("%s is not a CA certificate", certPath)
	}
	if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(ca.PublicKey) {
		return nil, nil, fmt.Errorf("%s does not hold the key of %s", keyPath, certPath)
	}
	return ca, key, nil
}

func sign(tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) (*x509.Certificate, []byte, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	tmpl.SerialNumber = serial
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, der, err
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// parseKey reads the first private key in PEM data (PKCS #8, SEC 1 or
// PKCS #1).
func parseKey(b []byte) (crypto.Signer, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, errors.New("no PEM private key")
		}
		var k any
		var err error
		switch blk.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(blk.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, err
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("private key of type %T cannot sign", k)
		}
		return s, nil
	}
}

// parseCerts reads every certificate in PEM data.
func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return out, nil
}

// writeNew writes data as dir/name (mode 0600) unless that exists: a
// private temporary file, synced, hard-linked into place (which fails if
// the name is taken), then the directory synced.
func writeNew(dir, name string, data []byte) error {
	tmp, err := writeTemp(dir, data)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, filepath.Join(dir, name)); err != nil {
		return err
	}
	return syncDir(dir)
}

// writeReplace writes data as dir/name (mode 0600), replacing it
// atomically: a reader sees the old file or the new one, never a part.
func writeReplace(dir, name string, data []byte) error {
	tmp, err := writeTemp(dir, data)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(dir)
}

func writeTemp(dir string, data []byte) (string, error) {
	f, err := os.CreateTemp(dir, ".tmp-*") // mode 0600
	if err != nil {
		return "", err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", err
	}
	return f.Name(), nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
