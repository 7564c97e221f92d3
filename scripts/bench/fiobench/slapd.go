package main

// The directory load: the same slapd setup as internal/slapdtest (slapd.conf,
// back_mdb, schemas core/cosine/inetorgperson, an ldapi socket under a short
// /tmp path), written out here because that package's API takes a
// testing.TB. Unlike its NoSync option, LMDB keeps its fsync per
// transaction: how fast the volume makes a write durable is the point.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/ldmirror/ldmirror/scripts/bench/internal/benchenv"
)

const (
	slapdBinary = benchenv.SlapdBinary
	suffix      = benchenv.Suffix
	rootDN      = benchenv.RootDN
	rootPW      = benchenv.RootPW
)

// prepareSlapd checks the tools and writes the entries' LDIF once.
func (b *bench) prepareSlapd() error {
	if _, err := os.Stat(slapdBinary); err != nil {
		return errors.New("needs slapd (apt-get install slapd ldap-utils)")
	}
	for _, t := range []string{"ldapadd", "mkfs.ext4", "stdbuf"} {
		if _, err := exec.LookPath(t); err != nil {
			return fmt.Errorf("needs %s (apt-get install ldap-utils e2fsprogs coreutils)", t)
		}
	}
	b.ldif = filepath.Join(b.work, "entries.ldif")
	f, err := os.Create(b.ldif)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	fmt.Fprintf(w, "dn: %s\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n", suffix)
	fmt.Fprintf(w, "dn: ou=people,%s\nobjectClass: organizationalUnit\nou: people\n\n", suffix)
	for i := range b.entries {
		fmt.Fprintf(w, "dn: uid=user%06d,ou=people,%s\nobjectClass: inetOrgPerson\nuid: user%06d\n"+
			"cn: User %d\nsn: Number%d\ngivenName: User\nmail: user%06d@example.com\n"+
			"telephoneNumber: +1 555 %07d\nemployeeNumber: %d\n"+
			"description: generated entry %d of the ldmirror directory benchmark\n\n",
			i, suffix, i, i, i, i, i, i, i)
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// slapdLoad makes ext4 on dev, runs slapd with its LMDB directory there and
// times ldapadd adding the generated entries over ldapi, one connection,
// each add acknowledged (and fsynced by LMDB) before the next.
func (b *bench) slapdLoad(dev string) (result, error) {
	mnt, err := b.mountExt4(dev)
	if err != nil {
		return result{}, err
	}
	defer b.popCleanup()

	data := filepath.Join(mnt, "ldap")
	if err := os.Mkdir(data, 0o700); err != nil {
		return result{}, err
	}
	dir, err := os.MkdirTemp("", "ldmb-") // ldapi socket paths are limited to 108 bytes
	if err != nil {
		return result{}, err
	}
	defer os.RemoveAll(dir)
	conf := filepath.Join(dir, "slapd.conf")
	if err := benchenv.WriteSlapdConf(conf, dir, data); err != nil {
		return result{}, err
	}
	sock := filepath.Join(dir, "ldapi")
	ldapi := "ldapi://" + url.PathEscape(sock)
	logPath := filepath.Join(dir, "slapd.log")
	p, err := benchenv.Start(logPath, slapdBinary, "-f", conf, "-h", ldapi, "-d", "0")
	if err != nil {
		return result{}, err
	}
	b.pushCleanup(p.Stop)
	defer b.popCleanup()
	if err := slapdReady(p, sock, logPath); err != nil {
		return result{}, err
	}
	return b.ldapadd(ldapi)
}

// mountExt4 makes ext4 on dev and mounts it on a new directory under the
// work directory, which it returns; the unmount is pushed as a cleanup.
func (b *bench) mountExt4(dev string) (string, error) {
	mnt, err := os.MkdirTemp(b.work, "mnt")
	if err != nil {
		return "", err
	}
	// Inode tables and journal written now rather than by ext4lazyinit
	// during the measurement.
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0", dev).CombinedOutput(); err != nil {
		return "", fmt.Errorf("mkfs.ext4: %v: %s", err, out)
	}
	if out, err := exec.Command("mount", dev, mnt).CombinedOutput(); err != nil {
		return "", fmt.Errorf("mount: %v: %s", err, out)
	}
	b.pushCleanup(func() {
		if err := exec.Command("umount", mnt).Run(); err != nil {
			_ = exec.Command("umount", "-l", mnt).Run()
		}
	})
	return mnt, nil
}

// slapdReady waits until slapd accepts connections on sock; when it does
// not, or exits, the error carries its log.
func slapdReady(p *benchenv.Proc, sock, logPath string) error {
	if err := waitUntil(10*time.Second, func() bool {
		if !p.Running() {
			return true
		}
		conn, err := net.Dial("unix", sock)
		if err == nil {
			conn.Close()
		}
		return err == nil
	}); err != nil || !p.Running() {
		log, _ := os.ReadFile(logPath)
		return fmt.Errorf("slapd not ready (%v): %s", err, bytes.TrimSpace(log))
	}
	return nil
}

// ldapadd adds the generated entries over ldapi and returns the rate. At
// the time limit it kills ldapadd and returns the rate so far.
func (b *bench) ldapadd(ldapi string) (result, error) {
	// ldapadd prints "adding new entry" before each add: on the time limit,
	// the entries before the last one printed are done. stdbuf makes its
	// stdout line-buffered so that none waits in a buffer.
	cmd := exec.Command("stdbuf", "-oL", "ldapadd", "-H", ldapi, "-x", "-D", rootDN, "-w", rootPW, "-f", b.ldif)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return result{}, err
	}
	begin := time.Now()
	if err := cmd.Start(); err != nil {
		return result{}, err
	}
	started := countAdding(stdout)
	timer := time.AfterFunc(b.slapdLimit, func() { cmd.Process.Kill() })
	n := <-started
	err = cmd.Wait()
	elapsed := time.Since(begin)
	cut := !timer.Stop()
	added := b.entries + 2 // with the base entry and ou=people
	if cut {
		added = max(n-1, 0)
	} else if err != nil {
		return result{}, fmt.Errorf("ldapadd: %v: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	res := result{Entries: float64(added) / elapsed.Seconds(), ops: float64(added), cut: cut}
	if cut {
		res.note = fmt.Sprintf("cut at %s after %d entries", b.slapdLimit, added)
	}
	return res, nil
}

// countAdding counts ldapadd's "adding new entry" lines on stdout and sends
// the count when stdout ends.
func countAdding(stdout io.Reader) <-chan int {
	started := make(chan int)
	go func() {
		n := 0
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if bytes.HasPrefix(sc.Bytes(), []byte("adding new entry")) {
				n++
			}
		}
		started <- n
	}()
	return started
}
