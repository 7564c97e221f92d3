// Package pkitest makes certificates for tests: a CA in a temporary
// directory and node key pairs issued by it, as `ldmirror pki` does.
package pkitest

import (
	"path/filepath"
	"testing"

	"github.com/ldmirror/ldmirror/pki"
)

// CA is a test certificate authority in its own directory.
type CA struct {
	t   testing.TB
	Dir string
}

// New creates a CA in a new temporary directory.
func New(t testing.TB) *CA {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "pki")
	if _, err := pki.InitCA(dir, "test CA", pki.DefaultCAValidity); err != nil {
		t.Fatal(err)
	}
	return &CA{t: t, Dir: dir}
}

// Issue issues (or reissues) id's key pair in role and returns its files.
func (ca *CA) Issue(id string, role pki.Role) pki.Files {
	ca.t.Helper()
	if _, err := pki.Issue(ca.Dir, id, role, pki.DefaultNodeValidity); err != nil {
		ca.t.Fatal(err)
	}
	return pki.DirFiles(ca.Dir, id)
}

// Source issues id's key pair in role and loads it.
func (ca *CA) Source(id string, role pki.Role) *pki.Source {
	ca.t.Helper()
	s, err := pki.Load(ca.Issue(id, role))
	if err != nil {
		ca.t.Fatal(err)
	}
	return s
}

// Role is the role a test gives node id: "w" and names starting with "w"
// are witnesses, everything else a data host.
func Role(id string) pki.Role {
	if id != "" && id[0] == 'w' {
		return pki.RoleWitness
	}
	return pki.RoleData
}
