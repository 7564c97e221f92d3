package proxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/internal/poll"

	"github.com/go-ldap/ldap/v3"
	"github.com/ldmirror/ldmirror/internal/logbuf"
	"github.com/ldmirror/ldmirror/internal/slapdtest"
)

// TestPrimaryKilledDuringLdapadd: one ldapadd process streams adds through
// the proxy; the primary is killed (SIGKILL) in the middle and the
// secondary started only after a call has failed on both (a promotion).
// ldapadd exits 0 and every entry is on the secondary.
//
// Simulated: the mirrored volume. Both slapds use the same mdb directory and
// never run at the same time, which is what block mirroring gives the
// secondary; the mirroring itself comes in later issues.
func TestPrimaryKilledDuringLdapadd(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: kills slapd under a running ldapadd")
	}
	skipWithoutTools(t)
	a := slapdtest.Start(t, slapdtest.Options{})
	b := slapdtest.New(t, slapdtest.Options{DataDir: a.DataDir})
	logs := &slapdtest.Log{}
	cfg := backend(a, b)
	cfg.FailbackInterval = -1
	cfg.Logger = slog.New(logs)
	url, _ := startProxy(t, Config{Backend: cfg})

	cmd := exec.Command("ldapadd", admin(url, a)...)
	cmd.Env = append(os.Environ(), "LDAPNOINIT=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	const n = 200
	dn := func(i int) string { return fmt.Sprintf("cn=p%d,%s", i, a.Suffix) }
	send := func(from, to int) {
		for i := from; i < to; i++ {
			if _, err := io.WriteString(stdin, personLDIF(dn(i), fmt.Sprint(i), "s")); err != nil {
				t.Fatalf("write to ldapadd: %v", err)
			}
		}
	}
	send(0, n/2)
	poll.Until(t, 20*time.Second, "the first half on the primary", func() bool {
		_, err := readEntry(t, a, dn(n/2-1))
		return err == nil
	})
	if err := a.Kill(); err != nil {
		t.Fatal(err)
	}
	send(n/2, n/2+1)
	poll.Until(t, 10*time.Second, "an add failing on both servers", func() bool {
		return logs.Count("ldap call failed, will retry", b.URL) > 0
	})
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	send(n/2+1, n)
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("ldapadd: %v\n%s", err, out.String())
	}
	if logs.Count("ldap call retried") == 0 {
		t.Fatal("no call was retried; the kill missed the stream")
	}
	for i := range n {
		if _, err := readEntry(t, b, dn(i)); err != nil {
			t.Fatalf("%s not on the secondary: %v", dn(i), err)
		}
	}
}

// TestSignalDrainsSlowSearch runs the real binary: SIGTERM while a search is
// streaming to a slow ldapsearch. New connections are refused at once, the
// search completes for the client, then the proxy exits 0.
func TestSignalDrainsSlowSearch(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: builds ldmirror and streams a large search")
	}
	skipWithoutTools(t)
	bin := buildBinary(t)
	a := slapdtest.New(t, slapdtest.Options{NoSync: true})
	const n = 30000
	var ldif strings.Builder
	fmt.Fprintf(&ldif, "dn: %s\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: example\n\n", a.Suffix)
	pad := strings.Repeat("x", 300)
	for i := range n {
		fmt.Fprintf(&ldif, "dn: cn=e%d,%s\nobjectClass: inetOrgPerson\ncn: e%d\nsn: s\ndescription: %s\n\n", i, a.Suffix, i, pad)
	}
	if err := a.Load(ldif.String()); err != nil {
		t.Fatal(err)
	}
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	b := slapdtest.New(t, slapdtest.Options{}) // never started
	addr := freeAddr(t)
	var stderr logbuf.Buffer
	proxy := exec.Command(bin, "retrier", "--listen", "ldap://"+addr, "--primary", a.URL, "--secondary", b.URL, "--drain-timeout", "60s")
	proxy.Stderr = &stderr
	if err := proxy.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- proxy.Wait() }()
	t.Cleanup(func() { _ = proxy.Process.Kill() })
	poll.Until(t, 10*time.Second, "the proxy to listen", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})

	search := exec.Command("ldapsearch", "-x", "-LLL", "-H", "ldap://"+addr, "-b", a.Suffix, "(objectClass=inetOrgPerson)", "cn", "description")
	search.Env = append(os.Environ(), "LDAPNOINIT=1")
	stdout, err := search.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := search.Start(); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(stdout)
	entries := 0
	readLine := func() (string, error) {
		l, err := r.ReadString('\n')
		if strings.HasPrefix(l, "dn: ") {
			entries++
		}
		return l, err
	}
	for entries < 10 {
		if _, err := readLine(); err != nil {
			t.Fatalf("search output: %v", err)
		}
	}
	// The client is not reading: the search is in flight.
	if err := proxy.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, "new connections to be refused", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err != nil
	})
	select {
	case err := <-exited:
		t.Fatalf("proxy exited (%v) with the search in flight:\n%s", err, stderr.String())
	default:
	}
	if strings.Contains(stderr.String(), "operations in flight completed") {
		t.Fatalf("drain completed before the search did:\n%s", stderr.String())
	}
	for {
		if _, err := readLine(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if err := search.Wait(); err != nil {
		t.Fatalf("ldapsearch: %v", err)
	}
	if entries != n {
		t.Fatalf("client got %d entries, want %d", entries, n)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("proxy exit: %v\n%s", err, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("proxy did not exit after the drain:\n%s", stderr.String())
	}
	for _, s := range []string{"signal received", "operations in flight completed", "operations=1"} {
		if !strings.Contains(stderr.String(), s) {
			t.Fatalf("proxy log lacks %q:\n%s", s, stderr.String())
		}
	}
}

// buildBinary builds cmd/ldmirror into a temporary directory.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "ldmirror")
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(os.Getenv("GOROOT"), "bin", "go") // set by go test
	}
	out, err := exec.Command(goTool, "build", "-o", bin, "github.com/ldmirror/ldmirror/cmd/ldmirror").CombinedOutput()
	if err != nil {
		t.Fatalf("go build ./cmd/ldmirror: %v\n%s", err, out)
	}
	return bin
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestSoak: for 60 s, 4 clients run mixed operations through the proxy
// while the two servers are killed and restarted alternately (≥ 20 kills,
// some with both down for 1 s). No client sees an error and the final
// directory matches the model the clients keep.
//
// Simulated: the mirrored volume (shared mdb directory, one server up at a
// time), as in TestPrimaryKilledDuringLdapadd.
func TestSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: 60 s soak")
	}
	a := slapdtest.Start(t, slapdtest.Options{})
	b := slapdtest.New(t, slapdtest.Options{DataDir: a.DataDir})
	cfg := backend(a, b)
	cfg.FailbackInterval = 200 * time.Millisecond
	url, _ := startProxy(t, Config{Backend: cfg})

	const duration = 60 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()

	kills := 0
	churnErr := make(chan error, 1)
	go func() {
		up, down := a, b
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				churnErr <- nil
				return
			case <-time.After(2 * time.Second): // fault schedule, not synchronization
			}
			if err := up.Kill(); err != nil {
				churnErr <- err
				return
			}
			kills++
			if i%5 == 4 {
				time.Sleep(time.Second) // both down for 1 s: calls wait
			}
			if err := down.Start(); err != nil {
				churnErr <- err
				return
			}
			up, down = down, up
		}
	}()

	models := make([]map[string]string, 4)
	errs := make(chan error, 4)
	var ops [4]int
	for k := range models {
		models[k] = map[string]string{}
		go func() { errs <- soakClient(ctx, url, a, k, models[k], &ops[k]) }()
	}
	for range models {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if err := <-churnErr; err != nil {
		t.Fatal(err)
	}
	t.Logf("%d kills, operations per client %v", kills, ops)
	if kills < 20 {
		t.Fatalf("only %d kills", kills)
	}
	// Final content: read from whichever server is up.
	srv := a
	if !a.Running() {
		srv = b
	}
	c, err := srv.Dial()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	res, err := c.Search(ldap.NewSearchRequest(srv.Suffix, ldap.ScopeSingleLevel, ldap.NeverDerefAliases, 0, 0, false, "(cn=c*)", []string{"description"}, nil))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, e := range res.Entries {
		got[e.DN] = e.GetAttributeValue("description")
	}
	want := map[string]string{}
	for _, m := range models {
		for dn, d := range m {
			want[dn] = d
		}
	}
	if len(got) != len(want) {
		t.Errorf("directory has %d entries, model %d", len(got), len(want))
	}
	for dn, d := range want {
		if got[dn] != d {
			t.Errorf("%s: description %q, model %q", dn, got[dn], d)
		}
	}
	for dn := range got {
		if _, ok := want[dn]; !ok {
			t.Errorf("%s in the directory, not in the model", dn)
		}
	}
}

// soakClient runs random operations on its own entries (cn=c<k>-<n>) until
// ctx ends, keeping model (DN → description) in step; any error is
// returned.
func soakClient(ctx context.Context, url string, srv *slapdtest.Server, k int, model map[string]string, ops *int) error {
	c, err := ldap.DialURL(url)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetTimeout(30 * time.Second)
	if err := c.Bind(srv.RootDN, srv.RootPW); err != nil {
		return fmt.Errorf("client %d bind: %w", k, err)
	}
	rng := rand.New(rand.NewPCG(uint64(k), 1))
	next := 0
	newDN := func() (string, string) {
		next++
		cn := fmt.Sprintf("c%d-%d", k, next)
		return cn, "cn=" + cn + "," + srv.Suffix
	}
	pick := func() string {
		i := rng.IntN(len(model))
		for dn := range model {
			if i == 0 {
				return dn
			}
			i--
		}
		return ""
	}
	for ctx.Err() == nil {
		*ops++
		op := rng.IntN(6)
		if len(model) < 5 {
			op = 0
		}
		switch op {
		case 0: // add
			cn, dn := newDN()
			d := fmt.Sprintf("v%d", rng.Uint32())
			r := ldap.NewAddRequest(dn, nil)
			r.Attribute("objectClass", []string{"inetOrgPerson"})
			r.Attribute("cn", []string{cn})
			r.Attribute("sn", []string{"s"})
			r.Attribute("description", []string{d})
			if err := c.Add(r); err != nil {
				return fmt.Errorf("client %d add %s: %w", k, dn, err)
			}
			model[dn] = d
		case 1: // modify
			dn := pick()
			d := fmt.Sprintf("m%d", rng.Uint32())
			r := ldap.NewModifyRequest(dn, nil)
			r.Replace("description", []string{d})
			if err := c.Modify(r); err != nil {
				return fmt.Errorf("client %d modify %s: %w", k, dn, err)
			}
			model[dn] = d
		case 2: // delete
			dn := pick()
			if err := c.Del(ldap.NewDelRequest(dn, nil)); err != nil {
				return fmt.Errorf("client %d delete %s: %w", k, dn, err)
			}
			delete(model, dn)
		case 3: // rename
			dn := pick()
			cn, to := newDN()
			if err := c.ModifyDN(ldap.NewModifyDNRequest(dn, "cn="+cn, true, "")); err != nil {
				return fmt.Errorf("client %d rename %s: %w", k, dn, err)
			}
			model[to] = model[dn]
			delete(model, dn)
		case 4: // compare
			dn := pick()
			ok, err := c.Compare(dn, "description", model[dn])
			if err != nil || !ok {
				return fmt.Errorf("client %d compare %s: %v %w", k, dn, ok, err)
			}
		case 5: // search own entries, check against the model
			res, err := c.Search(ldap.NewSearchRequest(srv.Suffix, ldap.ScopeSingleLevel, ldap.NeverDerefAliases, 0, 0, false,
				fmt.Sprintf("(cn=c%d-*)", k), []string{"description"}, nil))
			if err != nil {
				return fmt.Errorf("client %d search: %w", k, err)
			}
			if len(res.Entries) != len(model) {
				return fmt.Errorf("client %d search: %d entries, model %d", k, len(res.Entries), len(model))
			}
			for _, e := range res.Entries {
				if model[e.DN] != e.GetAttributeValue("description") {
					return fmt.Errorf("client %d search: %s description %q, model %q", k, e.DN, e.GetAttributeValue("description"), model[e.DN])
				}
			}
		}
	}
	return nil
}
