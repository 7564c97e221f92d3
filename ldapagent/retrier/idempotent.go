package retrier

import (
	"fmt"
	"slices"
	"strings"

	"github.com/go-ldap/ldap/v3"
)

// overwrite makes the existing entry req.DN equal to req (docs/retrier.md). A modify
// first deletes the attributes req does not have, then replaces the others;
// if the server refuses to change the structural object class (69), a leaf
// entry is deleted and added again.
func overwrite(c *ldap.Conn, req *ldap.AddRequest) error {
	old, err := readEntry(c, req.DN)
	if ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject) {
		return c.Add(req) // deleted meanwhile
	}
	if err != nil {
		return err
	}
	want := withRDNValues(req)
	keep := make(map[string]bool, len(want))
	for _, a := range want {
		keep[strings.ToLower(a.Type)] = true
	}
	mod := ldap.NewModifyRequest(req.DN, req.Controls)
	for _, a := range old.Attributes {
		if !keep[strings.ToLower(a.Name)] {
			mod.Replace(a.Name, nil)
		}
	}
	for _, a := range want {
		mod.Replace(a.Type, a.Vals)
	}
	err = c.Modify(mod)
	if !ldap.IsErrorWithCode(err, ldap.LDAPResultObjectClassModsProhibited) {
		return err
	}
	kids, cerr := hasChildren(c, req.DN)
	if cerr != nil {
		return cerr
	}
	if kids {
		return fmt.Errorf("%w %s: structural object class differs and the entry has children: %w", ErrCannotOverwrite, req.DN, err)
	}
	if err := c.Del(ldap.NewDelRequest(req.DN, nil)); err != nil && !ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject) {
		return err
	}
	return c.Add(req)
}

// withRDNValues returns req's attributes plus the values of its DN's RDN
// that they lack. slapd adds those to an entry on add, so the entry an
// overwrite leaves must have them too; a modify without them fails with
// namingViolation (64). A DN that does not parse is left to the server.
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

// readEntry reads the user attributes of dn.
func readEntry(c *ldap.Conn, dn string) (*ldap.Entry, error) {
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

func hasChildren(c *ldap.Conn, dn string) (bool, error) {
	res, err := c.Search(ldap.NewSearchRequest(dn, ldap.ScopeSingleLevel, ldap.NeverDerefAliases,
		1, 0, false, "(objectClass=*)", []string{"1.1"}, nil))
	if ldap.IsErrorWithCode(err, ldap.LDAPResultSizeLimitExceeded) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	return len(res.Entries) > 0, nil
}

// sameAsTarget reports whether the target of rename req exists with the same
// attributes as its source, apart from the naming attributes of both RDNs.
func sameAsTarget(c *ldap.Conn, req *ldap.ModifyDNRequest) (bool, error) {
	target, err := targetDN(req)
	if err != nil {
		return false, err
	}
	src, err := readEntry(c, req.DN)
	if err != nil {
		return false, err
	}
	dst, err := readEntry(c, target)
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
