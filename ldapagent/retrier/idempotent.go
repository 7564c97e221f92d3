package retrier

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/go-ldap/ldap/v3"
)

// sameAsAdded reports whether the existing entry req.DN is what req
// writes (docs/retrier.md, idempotent writes): then an earlier attempt of
// the same add was applied and the add succeeded. Any other entry was
// written by someone else, and is left alone.
//
// The entry equals the request when it has the same attribute types, the
// same number of values of each, and every value of the request. Values are
// compared byte for byte first; if that fails the server compares them,
// with a base search whose filter asserts every value of the request: the
// server applies the attributes' matching rules (case, spaces in DNs) and
// their other names (surname for sn).
func (s *Session) sameAsAdded(ctx context.Context, c *conn, req *ldap.AddRequest) (bool, error) {
	want := withRDNValues(req)
	old, err := s.readEntry(ctx, c, req.DN)
	if ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject) {
		return false, nil // deleted meanwhile: the 68 stands
	}
	if err != nil {
		return false, err
	}
	if attrsEqual(old, addedEntry(req.DN, want), nil) {
		return true, nil
	}
	if countValues(old) != countValues(addedEntry(req.DN, want)) || len(old.Attributes) != len(want) {
		return false, nil
	}
	filter := assertAll(want)
	if _, err := ldap.CompileFilter(filter); err != nil {
		return false, nil // an attribute type no filter can name: not provably ours
	}
	entries, err := s.searchOn(ctx, c, ldap.NewSearchRequest(req.DN, ldap.ScopeBaseObject, ldap.NeverDerefAliases,
		1, 0, false, filter, []string{"1.1"}, nil))
	if ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return len(entries) == 1, nil
}

// addedEntry is the entry an add of attrs creates.
func addedEntry(dn string, attrs []ldap.Attribute) *ldap.Entry {
	e := &ldap.Entry{DN: dn}
	for _, a := range attrs {
		e.Attributes = append(e.Attributes, ldap.NewEntryAttribute(a.Type, a.Vals))
	}
	return e
}

func countValues(e *ldap.Entry) int {
	n := 0
	for _, a := range e.Attributes {
		n += len(a.Values)
	}
	return n
}

// assertAll is a filter that holds for an entry with every value of attrs.
func assertAll(attrs []ldap.Attribute) string {
	var b strings.Builder
	b.WriteString("(&")
	for _, a := range attrs {
		for _, v := range a.Vals {
			fmt.Fprintf(&b, "(%s=%s)", a.Type, ldap.EscapeFilter(v))
		}
	}
	b.WriteString(")")
	return b.String()
}

// withRDNValues returns req's attributes plus the values of its DN's RDN
// that they lack: slapd adds those to an entry on add, so the entry an add
// leaves has them too. A DN that does not parse is taken as it is.
func withRDNValues(req *ldap.AddRequest) []ldap.Attribute {
	dn, err := ldap.ParseDN(req.DN)
	if err != nil || len(dn.RDNs) == 0 {
		return req.Attributes
	}
	attrs := slices.Clone(req.Attributes)
	for _, av := range dn.RDNs[0].Attributes {
		i := slices.IndexFunc(attrs, func(a ldap.Attribute) bool { return strings.EqualFold(a.Type, av.Type) })
		if i < 0 {
			attrs = append(attrs, ldap.Attribute{Type: av.Type, Vals: []string{av.Value}})
			continue
		}
		if !slices.ContainsFunc(attrs[i].Vals, func(v string) bool { return strings.EqualFold(v, av.Value) }) {
			attrs[i].Vals = append(slices.Clip(attrs[i].Vals), av.Value)
		}
	}
	return attrs
}

// readEntry reads the user attributes of dn on c.
func (s *Session) readEntry(ctx context.Context, c *conn, dn string) (*ldap.Entry, error) {
	entries, err := s.searchOn(ctx, c, ldap.NewSearchRequest(dn, ldap.ScopeBaseObject, ldap.NeverDerefAliases,
		1, 0, false, "(objectClass=*)", []string{"*"}, nil))
	if err != nil {
		return nil, err
	}
	if len(entries) != 1 {
		return nil, ldap.NewError(ldap.LDAPResultNoSuchObject, fmt.Errorf("%s: %d entries", dn, len(entries)))
	}
	return entries[0], nil
}

// searchOn runs a search on c, within an attempt of a call.
func (s *Session) searchOn(ctx context.Context, c *conn, req *ldap.SearchRequest) ([]*ldap.Entry, error) {
	r, err := searchRequest(req)
	if err != nil {
		return nil, err
	}
	var entries []*ldap.Entry
	var seen map[string]struct{}
	res := &ldap.SearchResult{}
	final, err := s.exchange(ctx, c, r, false, &seen, func(msg []byte, _ bool) error {
		return collect(msg, res, func(e *ldap.Entry) error {
			entries = append(entries, e)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return entries, resultError(final)
}

// sameAsTarget reports whether the target of rename req exists with the same
// attributes as its source, apart from the naming attributes of both RDNs.
func (s *Session) sameAsTarget(ctx context.Context, c *conn, req *ldap.ModifyDNRequest) (bool, error) {
	target, err := targetDN(req)
	if err != nil {
		return false, err
	}
	src, err := s.readEntry(ctx, c, req.DN)
	if err != nil {
		return false, err
	}
	dst, err := s.readEntry(ctx, c, target)
	if err != nil {
		return false, err
	}
	skip := map[string]bool{}
	for _, dn := range []string{req.DN, target} {
		d, err := ldap.ParseDN(dn)
		if err != nil || len(d.RDNs) == 0 {
			continue
		}
		for _, a := range d.RDNs[0].Attributes {
			skip[strings.ToLower(a.Type)] = true
		}
	}
	return attrsEqual(src, dst, skip), nil
}

// targetDN is the DN an entry has after rename req.
func targetDN(req *ldap.ModifyDNRequest) (string, error) {
	parent := req.NewSuperior
	if parent == "" {
		d, err := ldap.ParseDN(req.DN)
		if err != nil {
			return "", err
		}
		if len(d.RDNs) > 0 {
			d.RDNs = d.RDNs[1:]
		}
		parent = d.String()
	}
	if parent == "" {
		return req.NewRDN, nil
	}
	return req.NewRDN + "," + parent, nil
}

// attrsEqual compares the attributes of two entries, names case-insensitive,
// values as sets, ignoring the names in skip.
func attrsEqual(a, b *ldap.Entry, skip map[string]bool) bool {
	norm := func(e *ldap.Entry) map[string][]string {
		m := map[string][]string{}
		for _, at := range e.Attributes {
			n := strings.ToLower(at.Name)
			if skip[n] {
				continue
			}
			v := slices.Clone(at.Values)
			slices.Sort(v)
			m[n] = v
		}
		return m
	}
	ma, mb := norm(a), norm(b)
	if len(ma) != len(mb) {
		return false
	}
	for k, v := range ma {
		if !slices.Equal(v, mb[k]) {
			return false
		}
	}
	return true
}
