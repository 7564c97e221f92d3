package proxy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
	"github.com/ldmirror/ldmirror/internal/slapdtest"
)

// TestRelayWithLdapUtils: unmodified clients (ldap-utils) through the proxy.
func TestRelayWithLdapUtils(t *testing.T) {
	skipWithoutTools(t)
	a := slapdtest.Start(t, slapdtest.Options{})
	b := slapdtest.Start(t, slapdtest.Options{Monitor: true})
	url, _ := startProxy(t, Config{Backend: backend(a, b)})
	base := a.Suffix
	var ldif strings.Builder
	for i := range 25 {
		ldif.WriteString(personLDIF(fmt.Sprintf("cn=u%d,%s", i, base), fmt.Sprint(i), "s"))
	}
	before, err := b.Operations()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		stdin string
		cmd   string
		args  []string
		code  int
		out   []string // substrings of the output
	}{
		{"add", ldif.String(), "ldapadd", admin(url, a), 0, nil},
		{"whoami keeps the identity", "", "ldapwhoami", admin(url, a), 0, []string{"dn:" + a.RootDN}},
		{"anonymous whoami", "", "ldapwhoami", []string{"-x", "-H", url}, 0, []string{"anonymous"}},
		{"paged search", "", "ldapsearch", append(admin(url, a), "-b", base, "-E", "pr=10/noprompt", "(cn=*)", "cn"), 0, []string{"numEntries: 25", "search: 4", "pagedresults: cookie="}},
		{"modify", "dn: cn=u1," + base + "\nchangetype: modify\nreplace: sn\nsn: changed\n", "ldapmodify", admin(url, a), 0, nil},
		{"compare true", "", "ldapcompare", append(admin(url, a), "cn=u1,"+base, "sn:changed"), 6, []string{"TRUE"}},
		{"compare false", "", "ldapcompare", append(admin(url, a), "cn=u1,"+base, "sn:s"), 5, []string{"FALSE"}},
		{"rename", "", "ldapmodrdn", append(admin(url, a), "-r", "cn=u2,"+base, "cn=u2new"), 0, nil},
		{"delete", "", "ldapdelete", append(admin(url, a), "cn=u3,"+base), 0, nil},
		{"wrong password", "", "ldapwhoami", []string{"-x", "-H", url, "-D", a.RootDN, "-w", "wrong"}, 49, []string{"Invalid credentials"}},
		{"schema violation", "dn: cn=bad," + base + "\nobjectClass: person\ncn: bad\n\n", "ldapadd", admin(url, a), 65, []string{"Object class violation"}},
		{"no such object keeps matchedDN", "", "ldapsearch", append(admin(url, a), "-b", "cn=x,ou=none,"+base), 32, []string{"matchedDN: " + base}},
		{"add existing without the option", personLDIF("cn=u4,"+base, "4", "s"), "ldapadd", admin(url, a), 68, []string{"Already exists"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, code := tool(t, c.stdin, c.cmd, c.args...)
			if code != c.code {
				t.Fatalf("%s exit %d, want %d:\n%s", c.cmd, code, c.code, out)
			}
			for _, s := range c.out {
				if !strings.Contains(out, s) {
					t.Fatalf("output lacks %q:\n%s", s, out)
				}
			}
		})
	}
	if e, err := readEntry(t, a, "cn=u2new,"+base); err != nil || e.GetAttributeValue("sn") != "s" {
		t.Fatalf("rename not applied on the primary: %v", err)
	}
	after, err := b.Operations()
	if err != nil {
		t.Fatal(err)
	}
	for _, op := range []string{"Add", "Modify", "Delete", "Modrdn", "Compare", "Extended"} {
		if after[op] != before[op] {
			t.Errorf("secondary saw %d %s operations, want none", after[op]-before[op], op)
		}
	}
	if after["Bind"] != before["Bind"]+1 {
		t.Errorf("secondary saw %d binds besides the counter read, want none", after["Bind"]-before["Bind"]-1)
	}
}

// TestIdempotentWritesWithLdapUtils: the idempotency table of docs/retrier.md
// through the proxy (--idempotent-writes applies it to every write).
func TestIdempotentWritesWithLdapUtils(t *testing.T) {
	skipWithoutTools(t)
	a := slapdtest.Start(t, slapdtest.Options{})
	cfg := backend(a, nil)
	cfg.IdempotentWrites = true
	url, _ := startProxy(t, Config{Backend: cfg})
	base := a.Suffix
	if out, code := tool(t, personLDIF("cn=x,"+base, "x", "old", "mail", "x@example.com"), "ldapadd", admin(url, a)...); code != 0 {
		t.Fatalf("setup: %s", out)
	}
	cases := []struct {
		name  string
		stdin string
		cmd   string
		args  []string
		check func(t *testing.T)
	}{
		{"add the same entry again", personLDIF("cn=x,"+base, "x", "old", "mail", "x@example.com"), "ldapadd", admin(url, a), nil},
		{"delete missing", "", "ldapdelete", append(admin(url, a), "cn=ghost,"+base), nil},
		{"rename missing source", "", "ldapmodrdn", append(admin(url, a), "-r", "cn=ghost,"+base, "cn=ghost2"), nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if out, code := tool(t, c.stdin, c.cmd, c.args...); code != 0 {
				t.Fatalf("%s exit %d, want 0:\n%s", c.cmd, code, out)
			}
			if c.check != nil {
				c.check(t)
			}
		})
	}
	t.Run("add over another entry", func(t *testing.T) {
		out, code := tool(t, personLDIF("cn=x,"+base, "x", "new", "title", "boss"), "ldapadd", admin(url, a)...)
		if code != 68 {
			t.Fatalf("ldapadd exit %d, want 68 (entryAlreadyExists):\n%s", code, out)
		}
		e, err := readEntry(t, a, "cn=x,"+base)
		if err != nil {
			t.Fatal(err)
		}
		if e.GetAttributeValue("sn") != "old" || e.GetAttributeValue("mail") != "x@example.com" || e.GetAttributeValue("title") != "" {
			t.Fatalf("entry changed: sn=%q mail=%q title=%q", e.GetAttributeValue("sn"), e.GetAttributeValue("mail"), e.GetAttributeValue("title"))
		}
	})
}

// TestBothDownThroughProxy: the client gets unavailable (52) after the call
// deadline, naming both servers.
func TestBothDownThroughProxy(t *testing.T) {
	a := slapdtest.New(t, slapdtest.Options{})
	b := slapdtest.New(t, slapdtest.Options{})
	cfg := backend(a, b)
	cfg.CallTimeout = time.Second
	url, _ := startProxy(t, Config{Backend: cfg})
	c, err := ldap.DialURL(url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	err = c.Bind(a.RootDN, a.RootPW)
	elapsed := time.Since(start)
	var le *ldap.Error
	if !errors.As(err, &le) || le.ResultCode != ldap.LDAPResultUnavailable {
		t.Fatalf("err = %v, want unavailable (52)", err)
	}
	if elapsed < time.Second || elapsed > 1100*time.Millisecond {
		t.Fatalf("answered after %v, want within [1 s, 1.1 s]", elapsed)
	}
	for _, u := range []string{a.URL, b.URL} {
		if !strings.Contains(err.Error(), u) {
			t.Fatalf("error %q does not name %s", err, u)
		}
	}
}

// TestAbandon: an abandoned search gets no response and the connection
// stays usable.
func TestAbandonAndConcurrentOps(t *testing.T) {
	a := slapdtest.Start(t, slapdtest.Options{})
	url, _ := startProxy(t, Config{Backend: backend(a, nil)})
	c, err := ldap.DialURL(url)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Bind(a.RootDN, a.RootPW); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := c.SearchAsync(ctx, ldap.NewSearchRequest(a.Suffix, ldap.ScopeWholeSubtree, 0, 0, 0, false, "(objectClass=*)", nil, nil), 0)
	cancel() // go-ldap sends Abandon
	for r.Next() {
	}
	ok, err := c.Compare(a.Suffix, "o", "example")
	if err != nil || !ok {
		t.Fatalf("compare after abandon: %v %v", ok, err)
	}
}
