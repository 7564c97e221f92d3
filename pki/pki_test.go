package pki_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/internal/fileperm"
	"github.com/ldmirror/ldmirror/internal/pkitest"
	"github.com/ldmirror/ldmirror/pki"
)

func mode(t *testing.T, p string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// TestInitIssue: pki init makes a 0700 directory of 0600 files and refuses
// to run twice; pki issue writes a 0600 pair that loads with the right
// identity; a witness's certificate says witness.
func TestInitIssue(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "sub", "pki")
	ca, err := pki.InitCA(dir, "", pki.DefaultCAValidity)
	if err != nil {
		t.Fatal(err)
	}
	if !ca.IsCA || ca.Subject.CommonName != "ldmirror CA" {
		t.Fatalf("CA certificate: IsCA %t, subject %s", ca.IsCA, ca.Subject)
	}
	if m := mode(t, dir); m != 0o700 {
		t.Fatalf("pki directory mode %04o, want 0700", m)
	}
	if _, err := pki.InitCA(dir, "", pki.DefaultCAValidity); !errors.Is(err, pki.ErrExists) {
		t.Fatalf("second init: %v, want ErrExists", err)
	}
	for id, role := range map[string]pki.Role{"a": pki.RoleData, "w": pki.RoleWitness} {
		cert, err := pki.Issue(dir, id, role, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if u := cert.URIs; len(u) != 1 || u[0].String() != "ldmirror://"+string(role)+"/"+id {
			t.Fatalf("%s: URIs %v", id, u)
		}
		src, err := pki.Load(pki.DirFiles(dir, id))
		if err != nil {
			t.Fatal(err)
		}
		if got := src.Identity(); got != (pki.Identity{ID: id, Role: role}) {
			t.Fatalf("identity %v, want %s %s", got, role, id)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
		if m := mode(t, filepath.Join(dir, e.Name())); m != 0o600 {
			t.Fatalf("%s has mode %04o, want 0600", e.Name(), m)
		}
	}
	if got := strings.Join(names, " "); got != "a.crt a.key ca.crt ca.key w.crt w.key" {
		t.Fatalf("files %s", got)
	}
	if _, err := pki.Issue(dir, "a b", pki.RoleData, time.Hour); !errors.Is(err, pki.ErrNodeID) {
		t.Fatalf("issue for %q: %v, want ErrNodeID", "a b", err)
	}
}

// TestOpenFilesRefused: a pki directory or a key others may read is
// refused with the fix in the message.
func TestOpenFilesRefused(t *testing.T) {
	ca := pkitest.New(t)
	files := ca.Issue("a", pki.RoleData)
	if err := os.Chmod(files.Key, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.Load(files); !errors.Is(err, fileperm.ErrReadable) || !strings.Contains(err.Error(), "chmod 600 "+files.Key) {
		t.Fatalf("load with a 0640 key: %v", err)
	}
	if err := os.Chmod(filepath.Join(ca.Dir, pki.CAKeyFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.Issue(ca.Dir, "b", pki.RoleData, time.Hour); !errors.Is(err, fileperm.ErrReadable) || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("issue with a 0644 CA key: %v", err)
	}
	if err := os.Chmod(ca.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.InitCA(ca.Dir, "", time.Hour); !errors.Is(err, fileperm.ErrReadable) || !strings.Contains(err.Error(), "chmod 700 "+ca.Dir) {
		t.Fatalf("init in a 0755 directory: %v", err)
	}
}

// TestLoadRefusesForeignCert: a certificate of another CA, or a key that
// is not the certificate's, does not load.
func TestLoadRefusesForeignCert(t *testing.T) {
	ca1, ca2 := pkitest.New(t), pkitest.New(t)
	f1, f2 := ca1.Issue("a", pki.RoleData), ca2.Issue("b", pki.RoleData)
	if _, err := pki.Load(pki.Files{Cert: f2.Cert, Key: f2.Key, CA: f1.CA}); err == nil || !strings.Contains(err.Error(), "does not verify") {
		t.Fatalf("another CA's certificate: %v", err)
	}
	if _, err := pki.Load(pki.Files{Cert: f1.Cert, Key: f2.Key, CA: f1.CA}); err == nil {
		t.Fatal("a key that is not the certificate's loaded")
	}
}

// handshake runs a TLS handshake between a client and a server source and
// returns what each side saw of the other.
func handshake(t *testing.T, client, server *tls.Config) (clientSaw, serverSaw tls.ConnectionState, cerr, serr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		ts := tls.Server(s, server)
		serr = ts.HandshakeContext(ctx)
		serverSaw = ts.ConnectionState()
		if serr != nil {
			s.Close()
		}
	}()
	tc := tls.Client(c, client)
	cerr = tc.HandshakeContext(ctx)
	clientSaw = tc.ConnectionState()
	if cerr != nil {
		c.Close()
	} else {
		// TLS 1.3: the server verifies the client after the client's
		// handshake returns; a read makes the client see its verdict.
		_ = tc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		var b [1]byte
		if _, err := tc.Read(b[:]); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			cerr = err
		}
	}
	<-done
	return
}

// TestMutualTLS: two nodes of one CA see each other's identity; a node of
// another CA is refused by both sides.
func TestMutualTLS(t *testing.T) {
	ca := pkitest.New(t)
	a, w := ca.Source("a", pki.RoleData), ca.Source("w", pki.RoleWitness)
	cs, ss, cerr, serr := handshake(t, w.ClientConfig(), a.ServerConfig())
	if cerr != nil || serr != nil {
		t.Fatalf("handshake: client %v, server %v", cerr, serr)
	}
	if cs.Version != tls.VersionTLS13 {
		t.Fatalf("version %x, want TLS 1.3", cs.Version)
	}
	if id, err := pki.PeerIdentity(ss); err != nil || id != (pki.Identity{ID: "w", Role: pki.RoleWitness}) {
		t.Fatalf("server saw %v, %v", id, err)
	}
	if id, err := pki.PeerIdentity(cs); err != nil || id.ID != "a" {
		t.Fatalf("client saw %v, %v", id, err)
	}
	if _, err := pki.DataHostID(ss); !errors.Is(err, pki.ErrRole) {
		t.Fatalf("DataHostID of a witness: %v, want ErrRole", err)
	}

	otherCA := pkitest.New(t)
	other := otherCA.Source("b", pki.RoleData)
	of := other.Files()
	pair, err := tls.LoadX509KeyPair(of.Cert, of.Key)
	if err != nil {
		t.Fatal(err)
	}
	// A client that accepts any server but presents another CA's
	// certificate: the server refuses it.
	impostor := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, Certificates: []tls.Certificate{pair}}
	_, _, cerr, serr = handshake(t, impostor, a.ServerConfig())
	if !errors.Is(serr, pki.ErrUntrusted) || cerr == nil {
		t.Fatalf("client of another CA: server %v, client %v", serr, cerr)
	}
	_, _, cerr, _ = handshake(t, a.ClientConfig(), other.ServerConfig())
	if !errors.Is(cerr, pki.ErrUntrusted) {
		t.Fatalf("server of another CA: client %v", cerr)
	}
	noCert := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true}
	_, _, _, serr = handshake(t, noCert, a.ServerConfig())
	if serr == nil {
		t.Fatal("a client without a certificate was accepted")
	}
}

// TestReload: a reloaded source presents its new certificate in the next
// handshake; a pair naming another node, or files that do not load, leave
// the current one in place.
func TestReload(t *testing.T) {
	ca := pkitest.New(t)
	a, b := ca.Source("a", pki.RoleData), ca.Source("b", pki.RoleData)
	old := a.Certificate().SerialNumber
	ca.Issue("a", pki.RoleData)
	if err := a.Reload(); err != nil {
		t.Fatal(err)
	}
	if a.Certificate().SerialNumber.Cmp(old) == 0 {
		t.Fatal("reload kept the old certificate")
	}
	_, ss, cerr, serr := handshake(t, a.ClientConfig(), b.ServerConfig())
	if cerr != nil || serr != nil {
		t.Fatal(cerr, serr)
	}
	if got := ss.PeerCertificates[0].SerialNumber; got.Cmp(a.Certificate().SerialNumber) != 0 {
		t.Fatalf("handshake after reload presented serial %x, want the new %x", got, a.Certificate().SerialNumber)
	}

	// Another node's pair under a's file names: refused.
	bf := pki.DirFiles(ca.Dir, "b")
	for _, p := range [][2]string{{bf.Cert, a.Files().Cert}, {bf.Key, a.Files().Key}} {
		data, err := os.ReadFile(p[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p[1], data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cur := a.Certificate().SerialNumber
	if err := a.Reload(); !errors.Is(err, pki.ErrReload) {
		t.Fatalf("reload of b's pair as a: %v, want ErrReload", err)
	}
	if err := os.WriteFile(a.Files().Cert, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := a.Reload(); err == nil {
		t.Fatal("reload of a garbage certificate succeeded")
	}
	if a.Certificate().SerialNumber.Cmp(cur) != 0 || a.Identity().ID != "a" {
		t.Fatal("a failed reload changed the current certificate")
	}
}

// TestExistingCAChain: a node certificate from an existing CA through an
// intermediate (cert file = leaf + intermediate, CA file = root) loads,
// and the peer verifies the chain.
func TestExistingCAChain(t *testing.T) {
	dir := t.TempDir()
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	serial := int64(1)
	mk := func(tmpl, parent *x509.Certificate, pub, signer any) *x509.Certificate {
		serial++
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	rootKey, interKey := newKey(), newKey()
	rootTmpl := &x509.Certificate{Subject: pkix.Name{CommonName: "Corp Root"}, IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	root := mk(rootTmpl, rootTmpl, &rootKey.PublicKey, rootKey)
	inter := mk(&x509.Certificate{Subject: pkix.Name{CommonName: "Corp Issuing"}, IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}, root, &interKey.PublicKey, rootKey)
	write := func(name string, blocks ...*pem.Block) string {
		var b []byte
		for _, blk := range blocks {
			b = append(b, pem.EncodeToMemory(blk)...)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	node := func(id string) pki.Files {
		k := newKey()
		leaf := mk(&x509.Certificate{
			Subject:     pkix.Name{CommonName: id + ".corp.example"},
			DNSNames:    []string{id + ".corp.example"},
			URIs:        []*url.URL{{Scheme: "https", Host: "corp.example"}, pki.URI(id, pki.RoleData)},
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		}, inter, &k.PublicKey, interKey)
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return pki.Files{
			Cert: write(id+".pem", &pem.Block{Type: "CERTIFICATE", Bytes: leaf.Raw}, &pem.Block{Type: "CERTIFICATE", Bytes: inter.Raw}),
			Key:  write(id+"-key.pem", &pem.Block{Type: "PRIVATE KEY", Bytes: der}),
			CA:   write("root.pem", &pem.Block{Type: "CERTIFICATE", Bytes: root.Raw}),
		}
	}
	a, err := pki.Load(node("a"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := pki.Load(node("b"))
	if err != nil {
		t.Fatal(err)
	}
	cs, ss, cerr, serr := handshake(t, a.ClientConfig(), b.ServerConfig())
	if cerr != nil || serr != nil {
		t.Fatal(cerr, serr)
	}
	if id, _ := pki.DataHostID(ss); id != "a" {
		t.Fatalf("b saw %q", id)
	}
	if id, _ := pki.DataHostID(cs); id != "b" {
		t.Fatalf("a saw %q", id)
	}
}

func TestIdentityOf(t *testing.T) {
	for _, tc := range []struct {
		uris []string
		want string // identity, or "" for an error
	}{
		{[]string{"ldmirror://data/a"}, "data a"},
		{[]string{"ldmirror://witness/w-1.x_y"}, "witness w-1.x_y"},
		{[]string{"spiffe://x/y", "ldmirror://data/b"}, "data b"},
		{nil, ""},
		{[]string{"ldmirror://data/a", "ldmirror://data/b"}, ""},
		{[]string{"ldmirror://primary/a"}, ""},
		{[]string{"ldmirror://data/a/b"}, ""},
		{[]string{"ldmirror://data/"}, ""},
		{[]string{"ldmirror://data/a?x"}, ""},
		{[]string{"ldmirror://data/a%20b"}, ""},
		{[]string{"ldmirror://u@data/a"}, ""},
		{[]string{"ldmirror://data:1/a"}, ""},
		{[]string{"ldmirror://data/" + strings.Repeat("x", 65)}, ""},
	} {
		var c x509.Certificate
		for _, s := range tc.uris {
			u, err := url.Parse(s)
			if err != nil {
				t.Fatal(err)
			}
			c.URIs = append(c.URIs, u)
		}
		id, err := pki.IdentityOf(&c)
		switch {
		case tc.want == "" && err == nil:
			t.Errorf("%v: accepted as %v", tc.uris, id)
		case tc.want != "" && (err != nil || id.String() != tc.want):
			t.Errorf("%v: %v, %v; want %s", tc.uris, id, err, tc.want)
		}
	}
}

func TestValidNodeID(t *testing.T) {
	for _, ok := range []string{"a", "host-1.example_x", strings.Repeat("Z", 64)} {
		if err := pki.ValidNodeID(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a b", "a/b", "é", "a\x00", "../x", strings.Repeat("z", 65), "a:b", "a@b"} {
		if err := pki.ValidNodeID(bad); !errors.Is(err, pki.ErrNodeID) {
			t.Errorf("%q: %v, want ErrNodeID", bad, err)
		}
	}
}

// FuzzParseURI: the SAN parser never panics, and what it accepts is
// exactly what URI writes.
func FuzzParseURI(f *testing.F) {
	for _, s := range []string{"ldmirror://data/a", "ldmirror://witness/w", "ldmirror://data/a/b", "ldmirror:data/a", "ldmirror://data/%41", "LDMIRROR://data/a"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := url.Parse(s)
		if err != nil {
			return
		}
		id, err := pki.ParseURI(u)
		if err != nil {
			return
		}
		if pki.ValidNodeID(id.ID) != nil {
			t.Fatalf("%q: accepted invalid id %q", s, id.ID)
		}
		back, err := pki.ParseURI(pki.URI(id.ID, id.Role))
		if err != nil || back != id {
			t.Fatalf("%q parsed as %v, which URI writes as %v (%v)", s, id, back, err)
		}
	})
}
