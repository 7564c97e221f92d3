package main

// slapd is set up as internal/slapdtest does (slapd.conf, back_mdb, schemas
// core/cosine/inetorgperson), written out here because that package's API
// takes a testing.TB; uid is indexed, as in any directory searched by uid.

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	slapdBinary = "/usr/sbin/slapd"
	suffix      = "dc=example,dc=com"
	people      = "ou=people," + suffix
	rootDN      = "cn=admin," + suffix
	rootPW      = "secret"
)

// proc is a child process.
type proc struct {
	cmd    *exec.Cmd
	exited chan struct{}
}

func start(logPath, name string, args ...string) (*proc, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{cmd: cmd, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(p.exited) }()
	return p, nil
}

func (p *proc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM and waits up to 30 s before SIGKILL.
func (p *proc) stop() {
	if p == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// cpu returns the CPU time (user + system) the process has used.
func (p *proc) cpu() time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	s, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+s) * time.Second / 100 // USER_HZ
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func waitListening(p *proc, addr string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for p.running() {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not listening within %v", addr, limit)
		}
		time.Sleep(20 * time.Millisecond) // polling interval
	}
	return fmt.Errorf("%s exited", p.cmd.Path)
}

// startSlapd writes a configuration, loads entries uid=user%06d under
// ou=people with slapadd and starts slapd on a free port.
func startSlapd(dir string, entries int, nosync bool) (*proc, string, error) {
	conf := filepath.Join(dir, "slapd.conf")
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o700); err != nil {
		return nil, "", err
	}
	var c bytes.Buffer
	for _, sch := range []string{"core", "cosine", "inetorgperson"} {
		fmt.Fprintf(&c, "include /etc/ldap/schema/%s.schema\n", sch)
	}
	fmt.Fprintf(&c, "pidfile %s\nargsfile %s\n", filepath.Join(dir, "slapd.pid"), filepath.Join(dir, "slapd.args"))
	c.WriteString("modulepath /usr/lib/ldap\nmoduleload back_mdb\nsizelimit unlimited\n")
	c.WriteString("database mdb\nmaxsize 1073741824\n")
	fmt.Fprintf(&c, "suffix %q\nrootdn %q\nrootpw %s\ndirectory %s\n", suffix, rootDN, rootPW, data)
	c.WriteString("index objectClass eq\nindex uid eq\n")
	if nosync {
		c.WriteString("dbnosync\n")
	}
	if err := os.WriteFile(conf, c.Bytes(), 0o600); err != nil {
		return nil, "", err
	}
	ldif := filepath.Join(dir, "entries.ldif")
	f, err := os.Create(ldif)
	if err != nil {
		return nil, "", err
	}
	w := bufio.NewWriter(f)
	fmt.Fprintf(w, "dn: %s\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n", suffix)
	fmt.Fprintf(w, "dn: %s\nobjectClass: organizationalUnit\nou: people\n\n", people)
	for i := range entries {
		fmt.Fprintf(w, "dn: uid=user%06d,%s\nobjectClass: inetOrgPerson\nuid: user%06d\n"+
			"cn: User %d\nsn: Number%d\ngivenName: User\nmail: user%06d@example.com\n"+
			"telephoneNumber: +1 555 %07d\nemployeeNumber: %d\n"+
			"description: generated entry %d of the retrier benchmark\n\n",
			i, people, i, i, i, i, i, i, i)
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return nil, "", err
	}
	if err := f.Close(); err != nil {
		return nil, "", err
	}
	if out, err := exec.Command("/usr/sbin/slapadd", "-q", "-f", conf, "-l", ldif).CombinedOutput(); err != nil {
		return nil, "", fmt.Errorf("slapadd: %v: %s", err, out)
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, "", err
	}
	p, err := start(filepath.Join(dir, "slapd.log"), slapdBinary, "-f", conf, "-h", "ldap://"+addr+"/", "-d", "0")
	if err != nil {
		return nil, "", err
	}
	if err := waitListening(p, addr, 10*time.Second); err != nil {
		p.stop()
		return nil, "", err
	}
	return p, addr, nil
}

// startProxy runs `ldmirror retrier` in front of the slapd at backend,
// with extra arguments.
func startProxy(bin, dir, backend string, extra ...string) (*proc, string, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, "", err
	}
	args := append([]string{"retrier", "--listen", "ldap://" + addr, "--primary", "ldap://" + backend, "--log-level", "warn"}, extra...)
	p, err := start(filepath.Join(dir, "retrier.log"), bin, args...)
	if err != nil {
		return nil, "", err
	}
	if err := waitListening(p, addr, 10*time.Second); err != nil {
		p.stop()
		return nil, "", err
	}
	return p, addr, nil
}
