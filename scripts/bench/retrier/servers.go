package main

// slapd is set up by benchenv.WriteSlapdConf, as internal/slapdtest does
// for the tests (whose API takes a testing.TB).

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/ldmirror/ldmirror/scripts/bench/internal/benchenv"
)

const (
	slapdBinary = benchenv.SlapdBinary
	suffix      = benchenv.Suffix
	people      = "ou=people," + suffix
	rootDN      = benchenv.RootDN
	rootPW      = benchenv.RootPW
)

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func waitListening(p *benchenv.Proc, addr string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for p.Running() {
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
	return fmt.Errorf("%s exited", p.Cmd.Path)
}

// startSlapd writes a configuration, loads entries uid=user%06d under
// ou=people with slapadd and starts slapd on a free port.
func startSlapd(dir string, entries int, nosync bool) (*benchenv.Proc, string, error) {
	conf := filepath.Join(dir, "slapd.conf")
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o700); err != nil {
		return nil, "", err
	}
	var extra []string
	if nosync {
		extra = append(extra, "dbnosync")
	}
	if err := benchenv.WriteSlapdConf(conf, dir, data, extra...); err != nil {
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
	p, err := benchenv.Start(filepath.Join(dir, "slapd.log"), slapdBinary, "-f", conf, "-h", "ldap://"+addr+"/", "-d", "0")
	if err != nil {
		return nil, "", err
	}
	if err := waitListening(p, addr, 10*time.Second); err != nil {
		p.Stop()
		return nil, "", err
	}
	return p, addr, nil
}

// startProxy runs `ldmirror retrier` in front of the slapd at backend,
// with extra arguments.
func startProxy(bin, dir, backend string, extra ...string) (*benchenv.Proc, string, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, "", err
	}
	args := append([]string{"retrier", "--listen", "ldap://" + addr, "--primary", "ldap://" + backend, "--log-level", "warn"}, extra...)
	p, err := benchenv.Start(filepath.Join(dir, "retrier.log"), bin, args...)
	if err != nil {
		return nil, "", err
	}
	if err := waitListening(p, addr, 10*time.Second); err != nil {
		p.Stop()
		return nil, "", err
	}
	return p, addr, nil
}
