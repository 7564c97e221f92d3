package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// The directory service as issue 17's third writer: slapd (LMDB) on the
// primary's ext4, and a client on host c that adds entries through
// `ldmirror retrier` (docs/retrier.md), which knows both data hosts. The
// operator of the runbook starts slapd after mounting the file system and
// stops it before unmounting it (docs/agent.md's hooks do the same). The
// checker reads every entry with slapcat from the primary's file system
// after each round: every acknowledged add of the round (a prefix of the
// adds, as for the other writers) and of the rounds before must be there.

const (
	ldapSuffix = "dc=example,dc=com"
	ldapAdmin  = "cn=admin," + ldapSuffix
	ldapPW     = "secret"
	ldapPeople = "ou=people," + ldapSuffix
	slapdBin   = "/usr/sbin/slapd"
	ldapPort   = "389"
	proxyPort  = "3890"
	// slapdLimit bounds slapd's start (LMDB opens at once; the load of the
	// machine is what takes time) and its stop.
	slapdLimit = 30 * time.Second
	// ldapCallTimeout is the retrier's deadline for one call, and the
	// client's is a little longer: a writer stopped at the end of a round
	// returns within it.
	ldapCallTimeout = 5 * time.Second
)

// service is a process of the lab other than the daemons: slapd, the
// retrier proxy.
type service struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

// startService runs args in host's network namespace, its output appended
// to log.
func startService(lab interface{ NS(string) string }, name, host, log string, args ...string) (*service, error) {
	f, err := os.OpenFile(log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fmt.Fprintf(f, "=== torture: %s on %s, %s: %s\n", name, host, time.Now().Format(time.RFC3339Nano), strings.Join(args, " "))
	cmd := exec.Command("nsenter", append([]string{"--net=/run/netns/" + lab.NS(host)}, args...)...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	s := &service{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(s.done)
	}()
	return s, nil
}

// signal sends sig and waits until the process exited; after limit it is
// killed. A nil service is stopped already.
func (s *service) signal(sig syscall.Signal, limit time.Duration) error {
	if s == nil {
		return nil
	}
	_ = s.cmd.Process.Signal(sig)
	select {
	case <-s.done:
		return nil
	case <-time.After(limit):
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	return fmt.Errorf("%s did not exit within %v of %v: killed", s.name, limit, sig)
}

// directory is the directory service of the campaign: slapd's
// configuration (its LMDB under the campaign's mount point, which is the
// current primary's file system), the slapd that runs, the proxy.
type directory struct {
	c     *campaign
	conf  string
	log   string
	slapd *service
	host  string // where slapd runs
	proxy *service
}

// ldapEnabled reports whether the campaign writes through slapd.
func (c *campaign) ldapEnabled() bool { return c.opt.ldapRate > 0 }

// setupDirectory writes slapd's configuration, creates the directory's
// base entries on the mounted file system (slapadd, offline) and starts
// the retrier proxy on c.
func (c *campaign) setupDirectory(ctx context.Context) error {
	dir := filepath.Join(c.root, "ldap")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	d := &directory{c: c, conf: filepath.Join(dir, "slapd.conf"), log: filepath.Join(c.logs, "slapd.log")}
	var b strings.Builder
	for _, sch := range []string{"core", "cosine", "inetorgperson"} {
		fmt.Fprintf(&b, "include /etc/ldap/schema/%s.schema\n", sch)
	}
	fmt.Fprintf(&b, "pidfile %s\nargsfile %s\nmodulepath /usr/lib/ldap\nmoduleload back_mdb\nsizelimit unlimited\n",
		filepath.Join(dir, "slapd.pid"), filepath.Join(dir, "slapd.args"))
	fmt.Fprintf(&b, "database mdb\nmaxsize %d\nsuffix %q\nrootdn %q\nrootpw %s\ndirectory %s\nindex objectClass,uid eq\n",
		64<<20, ldapSuffix, ldapAdmin, ldapPW, filepath.Join(c.mnt, "ldap"))
	if err := os.WriteFile(d.conf, []byte(b.String()), 0o600); err != nil {
		return err
	}
	if err := d.seed(ctx); err != nil {
		return err
	}
	p, err := startService(c.lab, "retrier", "c", filepath.Join(c.logs, "retrier.log"), c.h.bin, "retrier",
		"--listen", "ldap://"+c.lab.Addr("c")+":"+proxyPort,
		"--primary", "ldap://"+c.lab.Addr("a")+":"+ldapPort, "--secondary", "ldap://"+c.lab.Addr("b")+":"+ldapPort,
		"--call-timeout", ldapCallTimeout.String(), "--attempt-timeout", "2s", "--dial-timeout", "1s",
		"--failback-interval", "2s", "--idempotent-writes")
	if err != nil {
		return err
	}
	d.proxy = p
	c.dir = d
	c.o.Cleanup(func() {
		_ = d.stopSlapd()
		_ = d.proxy.signal(syscall.SIGKILL, 10*time.Second)
	})
	return nil
}

// seed creates the directory's database with its base entries on the
// mounted file system (slapadd, offline).
func (d *directory) seed(ctx context.Context) error {
	if err := os.Mkdir(filepath.Join(d.c.mnt, "ldap"), 0o700); err != nil {
		return err
	}
	base := filepath.Join(filepath.Dir(d.conf), "base.ldif")
	if err := os.WriteFile(base, []byte("dn: "+ldapSuffix+"\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n"+
		"dn: "+ldapPeople+"\nobjectClass: organizationalUnit\nou: people\n"), 0o600); err != nil {
		return err
	}
	_, err := run(ctx, 60*time.Second, "slapadd", "-q", "-f", d.conf, "-l", base)
	return err
}

// startSlapd starts slapd on host over the mounted file system and waits
// until it answers a bind.
func (d *directory) startSlapd(ctx context.Context, host string) error {
	if d.slapd != nil {
		return fmt.Errorf("slapd already runs on %s", d.host)
	}
	s, err := startService(d.c.lab, "slapd", host, d.log, slapdBin, "-d", "0", "-f", d.conf,
		"-h", "ldap://"+d.c.lab.Addr(host)+":"+ldapPort+"/")
	if err != nil {
		return err
	}
	d.slapd, d.host = s, host
	var last error
	err = waitFor(ctx, slapdLimit, "slapd on "+host+" to answer", func() bool {
		select {
		case <-s.done:
			last = errors.New("slapd exited: see " + d.log)
			return true
		default:
		}
		l, err := d.dial(ctx, d.c.lab.Addr(host)+":"+ldapPort)
		if err != nil {
			last = err
			return false
		}
		l.Close()
		last = nil
		return true
	})
	if err == nil {
		err = last
	}
	return err
}

// stopSlapd stops slapd (SIGTERM: it finishes what it writes) before its
// file system is unmounted.
func (d *directory) stopSlapd() error {
	s := d.slapd
	d.slapd, d.host = nil, ""
	return s.signal(syscall.SIGTERM, slapdLimit)
}

// killSlapd is kill -9 of slapd.
func (d *directory) killSlapd() error {
	s := d.slapd
	d.slapd, d.host = nil, ""
	return s.signal(syscall.SIGKILL, slapdLimit)
}

// dial connects from c to addr and binds as the directory's root.
func (d *directory) dial(ctx context.Context, addr string) (*ldap.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	nc, err := d.c.lab.Dial(dctx, "c", "tcp", addr)
	if err != nil {
		return nil, err
	}
	l := ldap.NewConn(nc, false)
	l.Start()
	l.SetTimeout(ldapCallTimeout + 3*time.Second)
	if err := l.Bind(ldapAdmin, ldapPW); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// slapcat dumps the directory on the mounted file system (slapd stopped)
// and returns the uid numbers of the people entries.
func (d *directory) slapcat(ctx context.Context) (map[uint64]bool, error) {
	out, err := run(ctx, 120*time.Second, "slapcat", "-f", d.conf, "-b", ldapSuffix)
	if err != nil {
		return nil, err
	}
	have := map[uint64]bool{}
	for _, line := range strings.Split(out, "\n") {
		rest, ok := strings.CutPrefix(line, "dn: uid=")
		if !ok {
			continue
		}
		uid, tail, _ := strings.Cut(rest, ",")
		k, err := strconv.ParseUint(uid, 10, 64)
		if err != nil || !strings.EqualFold(tail, ldapPeople) {
			return nil, fmt.Errorf("slapcat: an entry the campaign never adds: %q", line)
		}
		have[k] = true
	}
	return have, nil
}

// ldapWriter adds one entry per record, uid=k under ou=people, through the
// proxy, at most rate a second. An add that fails is tried again, as a
// client would, until it succeeds or the writer is stopped: the history's
// pending write is that add. entryAlreadyExists counts as success (the
// add was applied, its answer lost), as the proxy's idempotent writes do.
type ldapWriter struct {
	writerBase
	d    *directory
	rate int
	// failures counts failed attempts this round; lastErr is the last.
	mu2      sync.Mutex
	failures int
	lastErr  error
}

const ldapWriterID = 4

func newLDAPWriter(ledger *ledgerFile, d *directory, rate int) *ldapWriter {
	return &ldapWriter{writerBase: writerBase{id: ldapWriterID, label: "ldap", ledger: ledger}, d: d, rate: rate}
}

func (w *ldapWriter) run(stop <-chan struct{}) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	tick := time.NewTicker(time.Second / time.Duration(w.rate))
	defer tick.Stop()
	var l *ldap.Conn
	defer func() {
		if l != nil {
			l.Close()
		}
	}()
	noSlot := func(uint64) int { return -1 }
	a, _ := w.issue(noSlot)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		var err error
		if l == nil {
			l, err = w.d.dial(ctx, w.d.c.lab.Addr("c")+":"+proxyPort)
		}
		if err == nil {
			err = l.Add(person(a.K))
			if ldap.IsErrorWithCode(err, ldap.LDAPResultEntryAlreadyExists) {
				err = nil
			}
			if err != nil && !isLDAPResult(err) {
				l.Close() // a connection error: dial again
				l = nil
			}
		}
		if ctx.Err() != nil {
			// Stopped in the middle of the add: it stays pending.
			return nil
		}
		w.done(a, err) // a failure stays the pending add
		if err != nil {
			w.mu2.Lock()
			w.failures++
			w.lastErr = err
			w.mu2.Unlock()
			continue
		}
		a, _ = w.issue(noSlot)
	}
}

// isLDAPResult reports whether err is a result the server (or the proxy)
// sent, as opposed to a failed connection.
func isLDAPResult(err error) bool {
	var e *ldap.Error
	return errors.As(err, &e) && e.ResultCode != ldap.ErrorNetwork
}

// person is the entry of record k.
func person(k uint64) *ldap.AddRequest {
	uid := strconv.FormatUint(k, 10)
	r := ldap.NewAddRequest("uid="+uid+","+ldapPeople, nil)
	r.Attribute("objectClass", []string{"inetOrgPerson"})
	r.Attribute("uid", []string{uid})
	r.Attribute("cn", []string{"Person " + uid})
	r.Attribute("sn", []string{uid})
	return r
}

// attempts returns and resets the round's failed attempts.
func (w *ldapWriter) attempts() (int, error) {
	w.mu2.Lock()
	defer w.mu2.Unlock()
	n, err := w.failures, w.lastErr
	w.failures, w.lastErr = 0, nil
	return n, err
}

// checkLDAP checks the adds on the mounted file system of the round's
// final primary: this round's acknowledged adds a prefix of its adds, and
// every add of earlier rounds that was there after its round still there.
func (c *campaign) checkLDAP(ctx context.Context, r *roundRun, h history) (writerVerdict, error) {
	v := writerVerdict{Name: c.ldapw.name(), hist: h}
	have, err := c.dir.slapcat(ctx)
	if err != nil {
		v.prefixResult = checkFiles(h, func(uint64) bool { return false })
		v.Errors = append(v.Errors, err)
		return v, nil
	}
	v.prefixResult = checkFiles(h, func(k uint64) bool { return have[k] })
	known := map[uint64]bool{}
	for _, it := range h.items() {
		known[it.K] = true
	}
	gone := 0
	for _, k := range c.ldapKept {
		known[k] = true
		if !have[k] {
			if gone++; gone <= 3 {
				v.Errors = append(v.Errors, fmt.Errorf("entry uid=%d, there after its round, is gone", k))
			}
		}
	}
	if gone > 3 {
		v.Errors = append(v.Errors, fmt.Errorf("%d more entries of earlier rounds are gone", gone-3))
	}
	stray := 0
	for k := range have {
		if !known[k] {
			if stray++; stray <= 3 {
				v.Errors = append(v.Errors, fmt.Errorf("stray entry uid=%d: no add of it was issued", k))
			}
		}
	}
	items := h.items()
	kept := v.Present
	if v.Landed {
		kept++
	}
	for _, it := range items[:kept] {
		c.ldapKept = append(c.ldapKept, it.K)
	}
	if n, err := c.ldapw.attempts(); n > 0 {
		r.notef("ldap writer: %d failed attempts (the last: %v)", n, err)
	}
	return v, nil
}
