package probe

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
	"github.com/ldmirror/ldmirror/internal/slapdtest"
)

func TestCheck(t *testing.T) {
	srv := slapdtest.Start(t, slapdtest.Options{})
	base := Config{URL: srv.URL, Timeout: 2 * time.Second}
	admin := base
	admin.BindDN, admin.Password = srv.RootDN, srv.RootPW
	for _, tc := range []struct {
		name     string
		cfg      func() Config
		wantStep string // "" for success
		wantCode uint16
	}{
		{"anonymous root DSE", func() Config { return base }, "", 0},
		{"bind, read and canary write", func() Config {
			c := admin
			c.ReadDN, c.CanaryDN = srv.Suffix, srv.Suffix
			return c
		}, "", 0},
		{"over ldapi", func() Config {
			c := base
			c.URL = "ldapi://" + strings.ReplaceAll(srv.LDAPIPath, "/", "%2F")
			return c
		}, "", 0},
		{"wrong password", func() Config { c := admin; c.Password = "wrong"; return c }, StepBind, ldap.LDAPResultInvalidCredentials},
		{"missing entry", func() Config { c := admin; c.ReadDN = "cn=nobody," + srv.Suffix; return c }, StepRead, ldap.LDAPResultNoSuchObject},
		{"anonymous canary write", func() Config { c := base; c.CanaryDN = srv.Suffix; return c }, StepWrite, ldap.LDAPResultStrongAuthRequired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Check(context.Background(), tc.cfg())
			if tc.wantStep == "" {
				if r.Err != nil {
					t.Fatalf("probe failed: %v", r.Err)
				}
				return
			}
			var se *StepError
			if !errors.As(r.Err, &se) || se.Step != tc.wantStep {
				t.Fatalf("err = %v, want a failure of step %q", r.Err, tc.wantStep)
			}
			if tc.wantCode != 0 && !ldap.IsErrorWithCode(r.Err, tc.wantCode) {
				t.Fatalf("err = %v, want LDAP result %d", r.Err, tc.wantCode)
			}
		})
	}
	// The canary write really committed.
	conn, err := srv.Dial()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	res, err := conn.Search(ldap.NewSearchRequest(srv.Suffix, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 1, 0, false,
		"(objectClass=*)", []string{"description"}, nil))
	if err != nil || len(res.Entries) != 1 || !strings.HasPrefix(res.Entries[0].GetAttributeValue("description"), "ldmirror probe ") {
		t.Fatalf("canary not written: %v %v", res, err)
	}
}

func TestCheckServerDown(t *testing.T) {
	srv := slapdtest.Start(t, slapdtest.Options{})
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	r := Check(context.Background(), Config{URL: srv.URL})
	var se *StepError
	if !errors.As(r.Err, &se) || se.Step != StepConnect {
		t.Fatalf("err = %v, want a connect failure", r.Err)
	}
}

// A server that accepts connections and never answers must not hang the
// probe past its timeout.
func TestCheckSilentServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	const timeout = 300 * time.Millisecond
	r := Check(context.Background(), Config{URL: "ldap://" + ln.Addr().String(), Timeout: timeout})
	var se *StepError
	if !errors.As(r.Err, &se) || se.Step != StepRootDSE {
		t.Fatalf("err = %v, want the root DSE read to fail", r.Err)
	}
	if r.Latency > timeout+time.Second {
		t.Fatalf("probe took %v with a %v timeout", r.Latency, timeout)
	}
}

func TestMonitorThreshold(t *testing.T) {
	if testing.Short() {
		t.Skip("kills and restarts slapd; skipped with -short")
	}
	srv := slapdtest.Start(t, slapdtest.Options{})
	changes := make(chan Health, 16)
	m := Start(Config{URL: srv.URL, Interval: 50 * time.Millisecond, Timeout: time.Second, Threshold: 3},
		func(h Health) { changes <- h })
	defer m.Close()
	next := func(want bool) Health {
		t.Helper()
		select {
		case h := <-changes:
			if h.Up != want {
				t.Fatalf("change reported up=%v, want up=%v (%+v)", h.Up, want, h)
			}
			return h
		case <-time.After(10 * time.Second):
			t.Fatalf("no change to up=%v within 10 s; health %+v", want, m.Health())
		}
		return Health{}
	}
	next(true)
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	if h := next(false); h.ConsecutiveFailures != 3 || !strings.Contains(h.LastError, StepConnect) {
		t.Fatalf("down after %d failures (want exactly the threshold, 3), last error %q", h.ConsecutiveFailures, h.LastError)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	if h := next(true); h.ConsecutiveFailures != 0 || h.LastSuccess.IsZero() {
		t.Fatalf("up again: %+v", h)
	}
	select {
	case h := <-changes:
		t.Fatalf("unexpected change %+v", h)
	default:
	}
}
