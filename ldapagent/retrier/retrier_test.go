package retrier

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/internal/poll"

	"github.com/go-ldap/ldap/v3"
	"github.com/ldmirror/ldmirror/internal/slapdtest"
)

func TestRetryable(t *testing.T) {
	cases := []struct {
		name  string
		err   error
		write bool
		want  bool
	}{
		{"nil", nil, true, false},
		{"dial refused", ldap.NewError(ldap.ErrorNetwork, errors.New("connection refused")), false, true},
		{"plain io error", io.ErrUnexpectedEOF, false, true},
		{"busy", ldap.NewError(ldap.LDAPResultBusy, nil), false, true},
		{"unavailable", ldap.NewError(ldap.LDAPResultUnavailable, nil), true, true},
		{"server down", ldap.NewError(81, nil), false, true},
		{"unwilling on write", ldap.NewError(ldap.LDAPResultUnwillingToPerform, nil), true, true},
		{"unwilling on read", ldap.NewError(ldap.LDAPResultUnwillingToPerform, nil), false, false},
		{"wrapped unavailable", fmt.Errorf("x: %w", ldap.NewError(ldap.LDAPResultUnavailable, nil)), true, true},
		{"invalid credentials", ldap.NewError(ldap.LDAPResultInvalidCredentials, nil), false, false},
		{"insufficient access", ldap.NewError(ldap.LDAPResultInsufficientAccessRights, nil), true, false},
		{"constraint violation", ldap.NewError(ldap.LDAPResultConstraintViolation, nil), true, false},
		{"object class violation", ldap.NewError(ldap.LDAPResultObjectClassViolation, nil), true, false},
		{"entry exists", ldap.NewError(ldap.LDAPResultEntryAlreadyExists, nil), true, false},
		{"filter compile", ldap.NewError(ldap.ErrorFilterCompile, nil), false, false},
		{"caller's callback", &finalError{io.EOF}, false, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := Retryable(c.err, c.write); got != c.want {
				t.Fatalf("Retryable(%v, write=%v) = %v, want %v", c.err, c.write, got, c.want)
			}
		})
	}
}

func TestConfigValidation(t *testing.T) {
	cases := []struct {
		cfg Config
		ok  bool
	}{
		{Config{}, false},
		{Config{Primary: "http://x"}, false},
		{Config{Primary: "ldap://127.0.0.1:1", Secondary: "ftp://x"}, false},
		{Config{Primary: "ldap://127.0.0.1:1", Secondary: "ldaps://h:636"}, true},
		{Config{Primary: "ldapi://%2Ftmp%2Fsock"}, true},
	}
	for _, c := range cases {
		_, err := OpenLazy(c.cfg)
		if (err == nil) != c.ok {
			t.Errorf("OpenLazy(%+v) err=%v, want ok=%v", c.cfg, err, c.ok)
		}
		if err != nil && !errors.Is(err, ErrConfig) {
			t.Errorf("error %v does not match ErrConfig", err)
		}
	}
}

// TestBothDown: with both servers down a call fails after its deadline, not
// much later, with an error naming both servers (docs/retrier.md). "Not
// much later" is measured from when a timer set for the deadline fires:
// on a loaded machine that is itself late.
func TestBothDown(t *testing.T) {
	a := slapdtest.New(t, slapdtest.Options{}) // configured, never started
	b := slapdtest.New(t, slapdtest.Options{})
	s, err := OpenLazy(Config{Primary: a.URL, Secondary: b.URL, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const deadline = time.Second
	start := time.Now() // before the deadline is set: the call may end exactly at it
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	fired := make(chan time.Duration, 1)
	time.AfterFunc(deadline, func() { fired <- time.Since(start) })
	err = s.Add(ctx, person("cn=x,"+a.Suffix, "x", "x"))
	elapsed := time.Since(start)
	if !errors.Is(err, ErrAllServersFailed) {
		t.Fatalf("err = %v, want ErrAllServersFailed", err)
	}
	timer := <-fired
	if elapsed < deadline || elapsed > timer+deadline/10 {
		t.Fatalf("failed after %v, want within [%v, %v] (a timer for the deadline fired at %v)", elapsed, deadline, timer+deadline/10, timer)
	}
	for _, u := range []string{a.URL, b.URL} {
		if !strings.Contains(err.Error(), u) {
			t.Fatalf("error %q does not name %s", err, u)
		}
	}
	var ase *AllServersError
	if !errors.As(err, &ase) || ase.Attempts < 4 {
		t.Fatalf("want an *AllServersError with several rounds of attempts, got %#v", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error does not carry the deadline: %v", err)
	}
}

// TestNonRetryableErrors: final results are returned unchanged and the
// secondary sees no call.
func TestNonRetryableErrors(t *testing.T) {
	a := slapdtest.Start(t, slapdtest.Options{})
	b := slapdtest.Start(t, slapdtest.Options{Monitor: true})
	s := openSession(t, Config{Primary: a.URL, Secondary: b.URL, BindDN: a.RootDN, BindPassword: a.RootPW, CallTimeout: 5 * time.Second})
	ctx := context.Background()
	before, err := b.Operations()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		call func() error
		code uint16
	}{
		{"wrong password", func() error { return s.Bind(ctx, a.RootDN, "wrong") }, ldap.LDAPResultInvalidCredentials},
		{"schema violation", func() error {
			if err := s.Bind(ctx, a.RootDN, a.RootPW); err != nil {
				return err
			}
			r := ldap.NewAddRequest("cn=nosn,"+a.Suffix, nil)
			r.Attribute("objectClass", []string{"person"})
			r.Attribute("cn", []string{"nosn"}) // person must have sn
			return s.Add(ctx, r)
		}, ldap.LDAPResultObjectClassViolation},
		{"no such parent", func() error { return s.Add(ctx, person("cn=x,ou=missing,"+a.Suffix, "x", "x")) }, ldap.LDAPResultNoSuchObject},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			err := c.call()
			var le *ldap.Error
			if !errors.As(err, &le) || le.ResultCode != c.code {
				t.Fatalf("err = %v, want result code %d", err, c.code)
			}
			if errors.Is(err, ErrAllServersFailed) {
				t.Fatalf("final error reported as a failover: %v", err)
			}
			if d := time.Since(start); d > time.Second {
				t.Fatalf("took %v: was it retried?", d)
			}
		})
	}
	after, err := b.Operations()
	if err != nil {
		t.Fatal(err)
	}
	// Reading the counters costs one bind and one search each time.
	for _, op := range []string{"Add", "Modify", "Delete", "Modrdn", "Compare"} {
		if after[op] != before[op] {
			t.Errorf("secondary saw %d %s operations, want 0", after[op]-before[op], op)
		}
	}
	if after["Bind"] != before["Bind"]+1 {
		t.Errorf("secondary saw %d binds, want only the counter read", after["Bind"]-before["Bind"]-1)
	}
}

// TestIdempotentWrites is the idempotency table of docs/retrier.md with IdempotentWrites
// (applied to every call); retried calls use the same code path and are
// exercised by the failover tests.
func TestIdempotentWrites(t *testing.T) {
	srv := slapdtest.Start(t, slapdtest.Options{})
	s := openSession(t, Config{Primary: srv.URL, BindDN: srv.RootDN, BindPassword: srv.RootPW, IdempotentWrites: true, CallTimeout: 5 * time.Second})
	plain := openSession(t, Config{Primary: srv.URL, BindDN: srv.RootDN, BindPassword: srv.RootPW, CallTimeout: 5 * time.Second})
	ctx := context.Background()
	base := srv.Suffix
	mustAdd := func(t *testing.T, r *ldap.AddRequest) {
		t.Helper()
		if err := plain.Add(ctx, r); err != nil {
			t.Fatalf("setup add %s: %v", r.DN, err)
		}
	}
	cases := []struct {
		name  string
		setup func(t *testing.T)
		call  func() error
		check func(t *testing.T, err error)
	}{
		{
			name:  "add existing leaf with the same attributes",
			setup: func(t *testing.T) { mustAdd(t, person("cn=a1,"+base, "a1", "same", "mail", "a1@example.com")) },
			call:  func() error { return s.Add(ctx, person("cn=a1,"+base, "a1", "same", "mail", "a1@example.com")) },
			check: func(t *testing.T, err error) {
				wantEntry(t, srv, err, person("cn=a1,"+base, "a1", "same", "mail", "a1@example.com"))
			},
		},
		{
			// slapd adds an RDN value the add lacks; the entry is still
			// what the add wrote.
			name:  "add existing leaf, request without the RDN value",
			setup: func(t *testing.T) { mustAdd(t, person("cn=a5,"+base, "p5", "s")) },
			call:  func() error { return s.Add(ctx, person("cn=a5,"+base, "p5", "s")) },
			check: func(t *testing.T, err error) { wantOK(t, err) },
		},
		{
			// The server compares what bytes cannot: a DN value with
			// spaces, which slapd stores without them.
			name: "add existing entry, values equal by matching rule",
			setup: func(t *testing.T) {
				mustAdd(t, person("cn=a6,"+base, "a6", "s", "seeAlso", "cn=a1,"+base))
			},
			call: func() error {
				return s.Add(ctx, person("cn=a6,"+base, "A6", "S", "seeAlso", "CN=a1, "+base))
			},
			check: func(t *testing.T, err error) { wantOK(t, err) },
		},
		{
			name:  "add existing entry with other attributes",
			setup: func(t *testing.T) { mustAdd(t, person("cn=a2,"+base, "a2", "old", "mail", "old@example.com")) },
			call:  func() error { return s.Add(ctx, person("cn=a2,"+base, "a2", "new", "title", "boss")) },
			check: func(t *testing.T, err error) {
				wantCode(t, err, ldap.LDAPResultEntryAlreadyExists)
				wantEntry(t, srv, nil, person("cn=a2,"+base, "a2", "old", "mail", "old@example.com"))
			},
		},
		{
			name:  "add existing entry with one value more",
			setup: func(t *testing.T) { mustAdd(t, person("cn=a3,"+base, "a3", "s", "mail", "a3@example.com")) },
			call:  func() error { return s.Add(ctx, person("cn=a3,"+base, "a3", "s")) },
			check: func(t *testing.T, err error) { wantCode(t, err, ldap.LDAPResultEntryAlreadyExists) },
		},
		{
			name:  "delete missing",
			call:  func() error { return s.Delete(ctx, ldap.NewDelRequest("cn=ghost,"+base, nil)) },
			check: func(t *testing.T, err error) { wantOK(t, err) },
		},
		{
			name:  "rename missing source",
			call:  func() error { return s.ModifyDN(ctx, ldap.NewModifyDNRequest("cn=ghost,"+base, "cn=ghost2", true, "")) },
			check: func(t *testing.T, err error) { wantOK(t, err) },
		},
		{
			name:  "rename missing source, target present",
			setup: func(t *testing.T) { mustAdd(t, person("cn=r2,"+base, "r2", "s")) },
			call:  func() error { return s.ModifyDN(ctx, ldap.NewModifyDNRequest("cn=r1,"+base, "cn=r2", true, "")) },
			check: func(t *testing.T, err error) { wantOK(t, err) },
		},
		{
			name: "rename onto target with same attributes",
			setup: func(t *testing.T) {
				mustAdd(t, person("cn=r3,"+base, "r3", "same"))
				mustAdd(t, person("cn=r4,"+base, "r4", "same"))
			},
			call:  func() error { return s.ModifyDN(ctx, ldap.NewModifyDNRequest("cn=r3,"+base, "cn=r4", true, "")) },
			check: func(t *testing.T, err error) { wantOK(t, err) },
		},
		{
			name: "rename onto a different target is refused",
			setup: func(t *testing.T) {
				mustAdd(t, person("cn=r5,"+base, "r5", "one"))
				mustAdd(t, person("cn=r6,"+base, "r6", "other"))
			},
			call:  func() error { return s.ModifyDN(ctx, ldap.NewModifyDNRequest("cn=r5,"+base, "cn=r6", true, "")) },
			check: func(t *testing.T, err error) { wantCode(t, err, ldap.LDAPResultEntryAlreadyExists) },
		},
		{
			name:  "rename under a missing superior is refused",
			setup: func(t *testing.T) { mustAdd(t, person("cn=r7,"+base, "r7", "s")) },
			call: func() error {
				return s.ModifyDN(ctx, ldap.NewModifyDNRequest("cn=r7,"+base, "cn=r7", true, "ou=missing,"+base))
			},
			check: func(t *testing.T, err error) { wantCode(t, err, ldap.LDAPResultNoSuchObject) },
		},
		{
			name:  "without the option, add existing is entryAlreadyExists",
			setup: func(t *testing.T) { mustAdd(t, person("cn=a9,"+base, "a9", "s")) },
			call:  func() error { return plain.Add(ctx, person("cn=a9,"+base, "a9", "t")) },
			check: func(t *testing.T, err error) { wantCode(t, err, ldap.LDAPResultEntryAlreadyExists) },
		},
		{
			name:  "without the option, delete missing is noSuchObject",
			call:  func() error { return plain.Delete(ctx, ldap.NewDelRequest("cn=ghost,"+base, nil)) },
			check: func(t *testing.T, err error) { wantCode(t, err, ldap.LDAPResultNoSuchObject) },
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.setup != nil {
				c.setup(t)
			}
			c.check(t, c.call())
		})
	}
}

func wantOK(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("err = %v, want success", err)
	}
}

func wantCode(t *testing.T, err error, code uint16) {
	t.Helper()
	if !ldap.IsErrorWithCode(err, code) {
		t.Fatalf("err = %v, want result code %d", err, code)
	}
}

// wantEntry checks the call succeeded and the entry on srv has exactly the
// attributes of r.
func wantEntry(t *testing.T, srv *slapdtest.Server, err error, r *ldap.AddRequest) {
	t.Helper()
	wantOK(t, err)
	got, err := entry(t, srv, r.DN)
	if err != nil {
		t.Fatalf("read %s: %v", r.DN, err)
	}
	want := ldap.NewEntry(r.DN, nil)
	for _, a := range r.Attributes {
		want.Attributes = append(want.Attributes, ldap.NewEntryAttribute(a.Type, a.Vals))
	}
	if attrs(got) != attrs(want) {
		t.Fatalf("entry %s:\n%s\nwant:\n%s", r.DN, attrs(got), attrs(want))
	}
}

// TestFailoverAndFailback: after the primary dies calls go to the secondary
// without an error; when the primary answers again calls go back to it.
// The servers are independent (no mirroring): the test only looks at where
// calls land.
func TestFailoverAndFailback(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: kills and restarts slapd")
	}
	a := slapdtest.Start(t, slapdtest.Options{})
	b := slapdtest.Start(t, slapdtest.Options{})
	s := openSession(t, Config{Primary: a.URL, Secondary: b.URL, BindDN: a.RootDN, BindPassword: a.RootPW,
		FailbackInterval: 50 * time.Millisecond, CallTimeout: 5 * time.Second, Logger: slog.New(&slapdtest.Log{})})
	ctx := context.Background()
	if err := s.Add(ctx, person("cn=onA,"+a.Suffix, "onA", "s")); err != nil {
		t.Fatal(err)
	}
	if err := a.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := s.Add(ctx, person("cn=onB,"+a.Suffix, "onB", "s")); err != nil {
		t.Fatalf("add after primary kill: %v", err)
	}
	if _, err := entry(t, b, "cn=onB,"+b.Suffix); err != nil {
		t.Fatalf("add after failover not on the secondary: %v", err)
	}
	if st := s.Status(); !st.FailedOver || st.Preferred != b.URL {
		t.Fatalf("status after failover = %+v", st)
	}
	// The session keeps using the secondary.
	if ok, err := s.Compare(ctx, "cn=onB,"+b.Suffix, "sn", "s"); err != nil || !ok {
		t.Fatalf("compare on secondary: %v %v", ok, err)
	}
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 5*time.Second, "failback to the primary", func() bool { return s.Status().Preferred == a.URL })
	if err := s.Add(ctx, person("cn=backOnA,"+a.Suffix, "backOnA", "s")); err != nil {
		t.Fatal(err)
	}
	if _, err := entry(t, a, "cn=backOnA,"+a.Suffix); err != nil {
		t.Fatalf("add after failback not on the primary: %v", err)
	}
}

// TestPrimaryKilledDuringAdds: a stream of adds; the primary is killed
// (SIGKILL) in the middle and the secondary started only after it died, as a
// promotion would. Every add returns success and every entry is on the
// secondary.
//
// Simulated: the mirrored volume. Both slapds use the same mdb directory and
// never run at the same time, which is what block mirroring gives the
// secondary; the mirroring itself comes in later issues. An add that the
// primary committed but never acknowledged is replayed on the secondary and
// must succeed by the idempotent add (entryAlreadyExists, and the entry is
// what the add sends).
func TestPrimaryKilledDuringAdds(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: kills slapd in the middle of a stream of adds")
	}
	a := slapdtest.Start(t, slapdtest.Options{})
	b := slapdtest.New(t, slapdtest.Options{DataDir: a.DataDir})
	ev := &slapdtest.Log{}
	s := openSession(t, Config{Primary: a.URL, Secondary: b.URL, BindDN: a.RootDN, BindPassword: a.RootPW,
		CallTimeout: 10 * time.Second, FailbackInterval: -1, Logger: slog.New(ev)})

	const n = 300
	var done atomic.Int64
	errc := make(chan error, 1)
	go func() {
		for i := range n {
			if err := s.Add(context.Background(), person(fmt.Sprintf("cn=p%d,%s", i, a.Suffix), fmt.Sprint(i), "s")); err != nil {
				errc <- fmt.Errorf("add %d: %w", i, err)
				return
			}
			done.Add(1)
		}
		errc <- nil
	}()
	poll.Until(t, 20*time.Second, "100 adds on the primary", func() bool { return done.Load() >= 100 })
	if err := a.Kill(); err != nil {
		t.Fatal(err)
	}
	killedAt := done.Load()
	// Promotion: start the secondary only once a call has failed on both.
	poll.Until(t, 5*time.Second, "a call failing on both servers", func() bool {
		return ev.Count("ldap call failed, will retry") >= 2
	})
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("a client saw an error: %v", err)
	}
	if killedAt >= n {
		t.Fatalf("all adds finished before the kill; the test proves nothing")
	}
	if ev.Count("ldap call retried") == 0 {
		t.Fatal("no call was retried")
	}
	c, err := b.Dial()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	res, err := c.Search(ldap.NewSearchRequest(b.Suffix, ldap.ScopeSingleLevel, ldap.NeverDerefAliases, 0, 0, false,
		"(objectClass=inetOrgPerson)", []string{"cn"}, nil))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Entries) != n {
		t.Fatalf("secondary has %d entries, want %d", len(res.Entries), n)
	}
}

// TestSignalHeldUntilCallCompletes: a signal that arrives during a streaming
// search is handled only after the search has delivered every entry; calls
// started meanwhile are refused with ErrDraining.
func TestSignalHeldUntilCallCompletes(t *testing.T) {
	srv := slapdtest.Start(t, slapdtest.Options{NoSync: true})
	c, err := srv.Dial()
	if err != nil {
		t.Fatal(err)
	}
	const n = 200
	for i := range n {
		if err := c.Add(person(fmt.Sprintf("cn=s%d,%s", i, srv.Suffix), "s", "s")); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()

	var delivered atomic.Int64
	handled := make(chan int64, 1)
	s := openSession(t, Config{Primary: srv.URL, HoldSignals: []os.Signal{syscall.SIGUSR1},
		OnSignal: func(os.Signal) { handled <- delivered.Load() }})
	ctx := context.Background()
	req := ldap.NewSearchRequest(srv.Suffix, ldap.ScopeSingleLevel, ldap.NeverDerefAliases, 0, 0, false,
		"(objectClass=inetOrgPerson)", []string{"cn"}, nil)
	_, err = s.SearchEach(ctx, req, func(*ldap.Entry) error {
		if delivered.Add(1) == 1 {
			if err := syscall.Kill(syscall.Getpid(), syscall.SIGUSR1); err != nil {
				return err
			}
			poll.Until(t, 5*time.Second, "the signal to be caught", func() bool {
				if s.gate.Enter() {
					s.gate.Leave()
					return false
				}
				return true
			})
			if _, err := s.Compare(ctx, srv.Suffix, "o", "example"); !errors.Is(err, ErrDraining) {
				return fmt.Errorf("call during drain: err = %v, want ErrDraining", err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-handled:
		if got != n {
			t.Fatalf("signal handled after %d of %d entries", got, n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("signal never handled")
	}
	// The session accepts calls again once the handler has returned.
	var cerr error
	poll.Until(t, 5*time.Second, "calls admitted after the handler", func() bool {
		_, cerr = s.Compare(ctx, srv.Suffix, "o", "example")
		return !errors.Is(cerr, ErrDraining)
	})
	if cerr != nil {
		t.Fatalf("call after the signal: %v", cerr)
	}
}

// TestIdempotentAddKeepsAnotherClientsEntry (issue 18, defect 6): an
// idempotent add that meets an entry it did not write (its attributes
// differ from the request's) returns entryAlreadyExists and leaves the
// entry alone; an entry equal to the request is the first attempt's and
// counts as success.
func TestIdempotentAddKeepsAnotherClientsEntry(t *testing.T) {
	srv := slapdtest.Start(t, slapdtest.Options{})
	s := openSession(t, Config{Primary: srv.URL, BindDN: srv.RootDN, BindPassword: srv.RootPW, IdempotentWrites: true, CallTimeout: 5 * time.Second})
	other := openSession(t, Config{Primary: srv.URL, BindDN: srv.RootDN, BindPassword: srv.RootPW, CallTimeout: 5 * time.Second})
	ctx := context.Background()
	base := srv.Suffix
	theirs := person("cn=d1,"+base, "d1", "theirs", "mail", "d1@example.com")
	if err := other.Add(ctx, theirs); err != nil {
		t.Fatal(err)
	}
	err := s.Add(ctx, person("cn=d1,"+base, "d1", "mine"))
	wantCode(t, err, ldap.LDAPResultEntryAlreadyExists)
	got, rerr := entry(t, srv, "cn=d1,"+base)
	if rerr != nil {
		t.Fatal(rerr)
	}
	want := ldap.NewEntry(theirs.DN, nil)
	for _, a := range theirs.Attributes {
		want.Attributes = append(want.Attributes, ldap.NewEntryAttribute(a.Type, a.Vals))
	}
	if attrs(got) != attrs(want) {
		t.Fatalf("another client's entry was changed:\n%s\nwant:\n%s", attrs(got), attrs(want))
	}

	// The same attributes, values in another order, names in another
	// case, without the RDN value (slapd adds it): what the first attempt
	// wrote.
	r := ldap.NewAddRequest("cn=d2,"+base, nil)
	r.Attribute("objectClass", []string{"inetOrgPerson"})
	r.Attribute("sn", []string{"a", "b"})
	r.Attribute("cn", []string{"x"})
	if err := other.Add(ctx, r); err != nil {
		t.Fatal(err)
	}
	again := ldap.NewAddRequest("cn=d2,"+base, nil)
	again.Attribute("OBJECTCLASS", []string{"inetOrgPerson"})
	again.Attribute("sn", []string{"b", "a"})
	again.Attribute("CN", []string{"x"})
	wantOK(t, s.Add(ctx, again))
}

// TestPasswordZeroed: the session's copy of a bind password is zeroed
// when another bind replaces it and when the session closes
// (docs/retrier.md, credentials).
func TestPasswordZeroed(t *testing.T) {
	srv := slapdtest.Start(t, slapdtest.Options{})
	s, err := OpenLazy(Config{Primary: srv.URL, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	kept := func() []byte {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.identity.password
	}
	zero := func(b []byte) bool { return len(b) > 0 && strings.Trim(string(b), "\x00") == "" }
	pw := []byte(srv.RootPW)
	if err := s.BindBytes(context.Background(), srv.RootDN, pw); err != nil {
		t.Fatal(err)
	}
	first := kept()
	if err := s.BindBytes(context.Background(), srv.RootDN, pw); err != nil {
		t.Fatal(err)
	}
	if !zero(first) {
		t.Fatalf("the replaced password is %q, want zeroes", first)
	}
	second := kept()
	if string(second) != srv.RootPW || string(pw) != srv.RootPW {
		t.Fatal("the session's copy or the caller's password changed before Close")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if !zero(second) {
		t.Fatalf("the password after Close is %q, want zeroes", second)
	}
}
