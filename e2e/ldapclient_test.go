// The LDAP client of the failover tests: adds that it records when they
// are acknowledged, and the check that every one of them is on a host.

package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// ldapClient talks to the directory from the client host c.
type ldapClient struct {
	tr   *trio
	dirs map[string]*directoryHost

	mu    sync.Mutex
	acked []ackedAdd
}

type ackedAdd struct {
	dn   string
	host string
	at   time.Time
}

func (c *ldapClient) dial(host string) (*ldap.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	nc, err := c.tr.lab.Dial(ctx, "c", "tcp", c.tr.port(host, "389"))
	if err != nil {
		return nil, err
	}
	l := ldap.NewConn(nc, false)
	l.Start()
	l.SetTimeout(5 * time.Second)
	if err := l.Bind(ldapAdmin, ldapPW); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

func (c *ldapClient) ping(host string) error {
	l, err := c.dial(host)
	if err != nil {
		return err
	}
	defer l.Close()
	_, err = l.Search(ldap.NewSearchRequest(ldapCanary, ldap.ScopeBaseObject, 0, 0, 0, false, "(objectClass=*)", nil, nil))
	return err
}

func person(uid string) *ldap.AddRequest {
	r := ldap.NewAddRequest("uid="+uid+",ou=people,"+ldapSuffix, nil)
	r.Attribute("objectClass", []string{"inetOrgPerson"})
	r.Attribute("uid", []string{uid})
	r.Attribute("cn", []string{"Person " + uid})
	r.Attribute("sn", []string{uid})
	r.Attribute("mail", []string{uid + "@example.com"})
	return r
}

// write adds entries prefix-0, prefix-1... until stop is closed, each to
// whichever host answers, and records every add that returned success. An
// add retried after a lost reply finds its entry: that counts as success.
func (c *ldapClient) write(prefix string, stop <-chan struct{}) {
	hosts := []string{"a", "b"}
	cur := 0
	var l *ldap.Conn
	defer func() {
		if l != nil {
			l.Close()
		}
	}()
	for k := 0; ; {
		select {
		case <-stop:
			return
		default:
		}
		if l == nil {
			var err error
			if l, err = c.dial(hosts[cur]); err != nil {
				cur = 1 - cur
				time.Sleep(50 * time.Millisecond) // retry pacing, not synchronization
				continue
			}
		}
		req := person(fmt.Sprintf("%s-%d", prefix, k))
		err := l.Add(req)
		if err != nil && !ldap.IsErrorWithCode(err, ldap.LDAPResultEntryAlreadyExists) {
			l.Close()
			l = nil
			cur = 1 - cur
			continue
		}
		c.mu.Lock()
		c.acked = append(c.acked, ackedAdd{dn: req.DN, host: hosts[cur], at: time.Now()})
		c.mu.Unlock()
		k++
	}
}

func (c *ldapClient) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.acked)
}

// firstOn returns when the first add after t0 succeeded on host.
func (c *ldapClient) firstOn(host string, t0 time.Time) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, a := range c.acked {
		if a.host == host && a.at.After(t0) {
			return a.at, true
		}
	}
	return time.Time{}, false
}

// checkAll asserts that every acknowledged add is on host.
func (c *ldapClient) checkAll(t *testing.T, host string) {
	t.Helper()
	c.mu.Lock()
	acked := slices.Clone(c.acked) // adds acknowledged before the search
	c.mu.Unlock()
	l, err := c.dial(host)
	if err != nil {
		t.Fatalf("dial %s: %v", host, err)
	}
	defer l.Close()
	res, err := l.SearchWithPaging(ldap.NewSearchRequest("ou=people,"+ldapSuffix, ldap.ScopeSingleLevel, 0, 0, 0, false,
		"(objectClass=inetOrgPerson)", []string{"1.1"}, nil), 1000)
	if err != nil {
		t.Fatalf("search on %s: %v", host, err)
	}
	have := make(map[string]bool, len(res.Entries))
	for _, e := range res.Entries {
		have[strings.ToLower(e.DN)] = true
	}
	var lost []string
	for _, a := range acked {
		if !have[strings.ToLower(a.dn)] {
			lost = append(lost, fmt.Sprintf("%s (acknowledged by %s at %s)", a.dn, a.host, a.at.Format("15:04:05.000")))
		}
	}
	if len(lost) > 0 {
		t.Fatalf("%d of %d acknowledged adds are missing on %s, e.g. %v", len(lost), len(acked), host, lost[:min(5, len(lost))])
	}
	t.Logf("all %d acknowledged adds are on %s (%d entries)", len(acked), host, len(res.Entries))
}
