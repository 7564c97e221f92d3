// Package slapdtest runs a real OpenLDAP slapd (Debian package, mdb backend)
// for tests: a private config and data directory under t.TempDir(), a free
// 127.0.0.1 port and an ldapi socket. Tests that need it are skipped with a
// reason when slapd is not installed.
//
// Two servers may share one data directory to stand in for a mirrored volume
// (the secondary takes over the primary's disk): never run them at the same
// time.
package slapdtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// Binary is the slapd executable the package runs.
const Binary = "/usr/sbin/slapd"

// Options configures a server. The zero value is usable.
type Options struct {
	// Suffix is the naming context; default "dc=example,dc=com".
	Suffix string
	// RootPW is the password of the root DN "cn=admin,<suffix>"; default "secret".
	RootPW string
	// DataDir is the mdb directory. Empty means a fresh temporary directory.
	DataDir string
	// Monitor adds the cn=Monitor database (operation counters).
	Monitor bool
	// NoSync turns off fsync (dbnosync) to make bulk loads fast. Not for
	// tests that check durability across a kill.
	NoSync bool
	// ReadyTimeout bounds Start and Restart; default 10 s.
	ReadyTimeout time.Duration
}

// Server is one slapd process; its URL and socket stay the same across
// restarts.
type Server struct {
	// URL is ldap://127.0.0.1:PORT.
	URL string
	// LDAPIPath is the path of the ldapi socket.
	LDAPIPath string
	// Suffix, RootDN and RootPW are the naming context and its root credentials.
	Suffix, RootDN, RootPW string
	// DataDir is the mdb directory.
	DataDir string

	t         testing.TB
	dir       string
	conf      string
	readyWait time.Duration

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// Installed reports whether slapd is available.
func Installed() bool {
	_, err := os.Stat(Binary)
	return err == nil
}

// SkipIfMissing skips the test when slapd is not installed.
func SkipIfMissing(t testing.TB) {
	t.Helper()
	if !Installed() {
		t.Skipf("slapd not installed (%s missing): apt-get install slapd ldap-utils", Binary)
	}
}

// New configures a server without starting it. The server is stopped when
// the test ends.
func New(t testing.TB, opts Options) *Server {
	t.Helper()
	SkipIfMissing(t)
	if opts.Suffix == "" {
		opts.Suffix = "dc=example,dc=com"
	}
	if opts.RootPW == "" {
		opts.RootPW = "secret"
	}
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 10 * time.Second
	}
	dir, err := os.MkdirTemp("", "slapdtest-") // short path: ldapi socket paths are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if opts.DataDir == "" {
		opts.DataDir = filepath.Join(dir, "data")
	}
	if err := os.MkdirAll(opts.DataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{
		URL:       fmt.Sprintf("ldap://127.0.0.1:%d", port),
		LDAPIPath: filepath.Join(dir, "ldapi"),
		Suffix:    opts.Suffix,
		RootDN:    "cn=admin," + opts.Suffix,
		RootPW:    opts.RootPW,
		DataDir:   opts.DataDir,
		t:         t,
		dir:       dir,
		conf:      filepath.Join(dir, "slapd.conf"),
		readyWait: opts.ReadyTimeout,
	}
	if err := os.WriteFile(s.conf, []byte(s.config(opts)), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Kill() })
	return s
}

// Start configures and starts a server and waits until it answers, failing
// the test otherwise.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	s := New(t, opts)
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *Server) config(opts Options) string {
	var b strings.Builder
	for _, sch := range []string{"core", "cosine", "inetorgperson"} {
		fmt.Fprintf(&b, "include /etc/ldap/schema/%s.schema\n", sch)
	}
	fmt.Fprintf(&b, "pidfile %s\nargsfile %s\n", filepath.Join(s.dir, "slapd.pid"), filepath.Join(s.dir, "slapd.args"))
	b.WriteString("modulepath /usr/lib/ldap\nmoduleload back_mdb\nsizelimit unlimited\n")
	b.WriteString("database mdb\nmaxsize 1073741824\n")
	fmt.Fprintf(&b, "suffix %q\nrootdn %q\nrootpw %s\ndirectory %s\n", s.Suffix, s.RootDN, s.RootPW, s.DataDir)
	b.WriteString("index objectClass eq\n")
	if opts.NoSync {
		b.WriteString("dbnosync\n")
	}
	if opts.Monitor {
		fmt.Fprintf(&b, "database monitor\nrootdn \"cn=monitor\"\naccess to * by dn.exact=%q read by * none\n", s.RootDN)
	}
	return b.String()
}

// Start starts slapd and waits until it answers a root bind.
func (s *Server) Start() error {
	s.mu.Lock()
	if s.cmd != nil {
		s.mu.Unlock()
		return fmt.Errorf("slapdtest: %s already running", s.URL)
	}
	logf, err := os.OpenFile(filepath.Join(s.dir, "slapd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		s.mu.Unlock()
		return err
	}
	ldapi := "ldapi://" + url.PathEscape(s.LDAPIPath)
	cmd := exec.Command(Binary, "-f", s.conf, "-h", s.URL+"/ "+ldapi, "-d", "0")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		s.mu.Unlock()
		_ = logf.Close()
		return fmt.Errorf("slapdtest: start: %w", err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		_ = logf.Close()
		close(done)
	}()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), s.readyWait)
	defer cancel()
	if err := s.WaitReady(ctx); err != nil {
		_ = s.Kill()
		return err
	}
	return s.ensureBase()
}

// WaitReady waits until the server answers a root bind or ctx ends.
func (s *Server) WaitReady(ctx context.Context) error {
	delay := 5 * time.Millisecond
	for {
		s.mu.Lock()
		done := s.done
		s.mu.Unlock()
		if done == nil {
			return fmt.Errorf("slapdtest: %s not started", s.URL)
		}
		select {
		case <-done:
			return fmt.Errorf("slapdtest: slapd exited during startup: %s", s.logTail())
		default:
		}
		c, err := s.Dial()
		if err == nil {
			_ = c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("slapdtest: %s not ready: %w (last error: %v)", s.URL, ctx.Err(), err)
		case <-time.After(delay):
		}
		delay = min(2*delay, 100*time.Millisecond)
	}
}

// Dial opens a connection bound as the root DN.
func (s *Server) Dial() (*ldap.Conn, error) {
	c, err := ldap.DialURL(s.URL, ldap.DialWithDialer(&net.Dialer{Timeout: time.Second}))
	if err != nil {
		return nil, err
	}
	c.SetTimeout(5 * time.Second)
	if err := c.Bind(s.RootDN, s.RootPW); err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}

func (s *Server) ensureBase() error {
	c, err := s.Dial()
	if err != nil {
		return err
	}
	defer c.Close()
	rdn := strings.SplitN(strings.SplitN(s.Suffix, ",", 2)[0], "=", 2)
	add := ldap.NewAddRequest(s.Suffix, nil)
	add.Attribute("objectClass", []string{"dcObject", "organization"})
	add.Attribute(rdn[0], []string{rdn[1]})
	add.Attribute("o", []string{rdn[1]})
	if err := c.Add(add); err != nil && !ldap.IsErrorWithCode(err, ldap.LDAPResultEntryAlreadyExists) {
		return fmt.Errorf("slapdtest: add base entry: %w", err)
	}
	return nil
}

// Kill stops slapd with SIGKILL and waits for it to exit. It is a no-op if
// slapd is not running.
func (s *Server) Kill() error { return s.signal(syscall.SIGKILL) }

// Stop stops slapd with SIGTERM and waits for it to exit.
func (s *Server) Stop() error { return s.signal(syscall.SIGTERM) }

// Restart stops slapd (SIGTERM) and starts it again on the same port.
func (s *Server) Restart() error {
	if err := s.Stop(); err != nil {
		return err
	}
	return s.Start()
}

// Running reports whether the slapd process is alive.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done == nil {
		return false
	}
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

func (s *Server) signal(sig syscall.Signal) error {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd, s.done = nil, nil
	s.mu.Unlock()
	if cmd == nil {
		return nil
	}
	if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("slapdtest: signal %v: %w", sig, err)
	}
	select {
	case <-done:
		return nil
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		return fmt.Errorf("slapdtest: slapd did not exit within 30 s of %v", sig)
	}
}

func (s *Server) logTail() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "slapd.log"))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Operations returns the number of operations slapd has initiated since it
// started, by type ("Bind", "Search", "Add", "Modify", "Modrdn", "Delete",
// "Compare", ...). It needs Options.Monitor. Reading it costs one Bind and
// one Search.
func (s *Server) Operations() (map[string]int, error) {
	return s.monitorOps(func(initiated, _ int) int { return initiated })
}

// InProgress returns the number of operations slapd has initiated and not
// completed, by type, not counting the search that reads them. An
// operation that is abandoned, or whose connection is closed, completes.
// It needs Options.Monitor.
func (s *Server) InProgress() (map[string]int, error) {
	ops, err := s.monitorOps(func(initiated, completed int) int { return initiated - completed })
	if err == nil {
		ops["Search"]-- // the search reading cn=Monitor
	}
	return ops, err
}

// monitorOps reads cn=Operations,cn=Monitor and returns f of each
// operation type's initiated and completed counts.
func (s *Server) monitorOps(f func(initiated, completed int) int) (map[string]int, error) {
	c, err := s.Dial()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	res, err := c.Search(ldap.NewSearchRequest("cn=Operations,cn=Monitor", ldap.ScopeSingleLevel,
		ldap.NeverDerefAliases, 0, 0, false, "(objectClass=*)", []string{"cn", "monitorOpInitiated", "monitorOpCompleted"}, nil))
	if err != nil {
		return nil, fmt.Errorf("slapdtest: read cn=Monitor: %w", err)
	}
	ops := make(map[string]int)
	for _, e := range res.Entries {
		var initiated, completed int
		if _, err := fmt.Sscan(e.GetAttributeValue("monitorOpInitiated"), &initiated); err != nil {
			return nil, fmt.Errorf("slapdtest: %s: %w", e.DN, err)
		}
		if _, err := fmt.Sscan(e.GetAttributeValue("monitorOpCompleted"), &completed); err != nil {
			return nil, fmt.Errorf("slapdtest: %s: %w", e.DN, err)
		}
		ops[e.GetAttributeValue("cn")] = f(initiated, completed)
	}
	return ops, nil
}

// Load adds the entries of an LDIF text with slapadd (fast, offline). The
// server must not be running; the base entry is not created by Load.
func (s *Server) Load(ldif string) error {
	if s.Running() {
		return fmt.Errorf("slapdtest: Load needs %s stopped", s.URL)
	}
	f := filepath.Join(s.dir, "load.ldif")
	if err := os.WriteFile(f, []byte(ldif), 0o600); err != nil {
		return err
	}
	out, err := exec.Command("/usr/sbin/slapadd", "-q", "-f", s.conf, "-l", f).CombinedOutput()
	if err != nil {
		return fmt.Errorf("slapdtest: slapadd: %w: %s", err, out)
	}
	return nil
}

// Slapcat dumps the database as LDIF with slapcat, which LMDB allows
// while slapd runs: two dumps of the same data are equal byte for byte.
func (s *Server) Slapcat() (string, error) {
	out, err := exec.Command("/usr/sbin/slapcat", "-f", s.conf).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("slapdtest: slapcat: %w: %s", err, ee.Stderr)
		}
		return "", fmt.Errorf("slapdtest: slapcat: %w", err)
	}
	return string(out), nil
}
