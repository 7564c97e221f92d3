package retrier

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
	"github.com/ldmirror/ldmirror/internal/slapdtest"
)

func person(dn, cn, sn string, extra ...string) *ldap.AddRequest {
	r := ldap.NewAddRequest(dn, nil)
	r.Attribute("objectClass", []string{"inetOrgPerson"})
	r.Attribute("cn", []string{cn})
	r.Attribute("sn", []string{sn})
	for i := 0; i+1 < len(extra); i += 2 {
		r.Attribute(extra[i], []string{extra[i+1]})
	}
	return r
}

func openSession(t testing.TB, cfg Config) *Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := Open(ctx, cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// entry reads dn from srv directly (not through the retrier).
func entry(t testing.TB, srv *slapdtest.Server, dn string) (*ldap.Entry, error) {
	t.Helper()
	c, err := srv.Dial()
	if err != nil {
		t.Fatalf("dial %s: %v", srv.URL, err)
	}
	defer c.Close()
	res, err := c.Search(ldap.NewSearchRequest(dn, ldap.ScopeBaseObject, ldap.NeverDerefAliases,
		1, 0, false, "(objectClass=*)", []string{"*"}, nil))
	if err != nil {
		return nil, err
	}
	if len(res.Entries) != 1 {
		return nil, ldap.NewError(ldap.LDAPResultNoSuchObject, fmt.Errorf("%s: %d entries", dn, len(res.Entries)))
	}
	return res.Entries[0], nil
}

// attrs renders an entry's attributes as "name=v1|v2" lines, sorted, names
// lower-cased, for comparisons.
func attrs(e *ldap.Entry) string {
	var lines []string
	for _, a := range e.Attributes {
		lines = append(lines, fmt.Sprintf("%s=%s", strings.ToLower(a.Name), strings.Join(a.Values, "|")))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}
