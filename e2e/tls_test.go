package e2e

import (
	"bufio"
	"bytes"
	"context"
	be "encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/internal/peertest"
	"github.com/ldmirror/ldmirror/internal/poll"
	"github.com/ldmirror/ldmirror/internal/tamper"
	"github.com/ldmirror/ldmirror/node"
	"github.com/ldmirror/ldmirror/pki"
	"github.com/ldmirror/ldmirror/transport"
	"github.com/ldmirror/ldmirror/volume"
)

// Issue 15's attacks on the data link, between two daemons on 127.0.0.1
// with an on-path relay (internal/tamper) in the primary's --peer.

// linkTimeout is the daemons' --timeout in these tests.
const linkTimeout = 2 * time.Second

// relayedPair starts secondary b and primary a, whose --peer is a relay to
// b, with more flags for both, and waits until they are connected.
func relayedPair(t *testing.T, raw bool, more ...string) (a, b string, relay *tamper.Relay, pri, sec *daemon) {
	t.Helper()
	a, b, creds := pairDirs(t, "16MiB")
	link := []string{"--tls-dir", creds}
	if len(more) > 0 && more[0] == "--insecure-plaintext-link" {
		secret := filepath.Join(t.TempDir(), "secret")
		if err := os.WriteFile(secret, []byte("e2e-shared-secret-0123456789abcdef\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		link = []string{"--secret-file", secret}
	}
	addr := peertest.FreeAddr(t)
	base := append([]string{"--timeout", linkTimeout.String()}, link...)
	sec = startDaemon(t, b, append(append([]string{"--role", "secondary", "--node-id", "b", "--listen", addr}, base...), more...)...)
	relay, err := tamper.New(addr, raw)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { relay.Close() })
	pri = startDaemon(t, a, append(append([]string{"--role", "primary", "--node-id", "a", "--peer", relay.Addr()}, base...), more...)...)
	poll.Until(t, 10*time.Second, "the primary to connect through the relay", func() bool {
		st, err := status(a)
		return err == nil && st.Link == node.LinkConnected && st.DirtyBlocks == 0
	})
	return a, b, relay, pri, sec
}

// blockWriter writes 4 KiB blocks through the primary's export, each with
// its number and a counter, until stopped.
type blockWriter struct {
	done    chan struct{}
	stop    chan struct{}
	written atomic.Int64
	err     error
}

func startWriter(t *testing.T, a string) *blockWriter {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(a, volume.ExportDir, "volume"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	w := &blockWriter{done: make(chan struct{}), stop: make(chan struct{})}
	go func() {
		defer close(w.done)
		defer f.Close()
		buf := make([]byte, blockSize)
		for k := int64(0); ; k++ {
			select {
			case <-w.stop:
				return
			default:
			}
			be.BigEndian.PutUint64(buf, uint64(k))
			for i := 8; i < len(buf); i += 8 {
				be.BigEndian.PutUint64(buf[i:], uint64(k)*0x9e3779b97f4a7c15+uint64(i))
			}
			if _, err := f.WriteAt(buf, (k%1024)*blockSize); err != nil {
				w.err = err
				return
			}
			w.written.Add(1)
		}
	}()
	t.Cleanup(w.halt)
	return w
}

func (w *blockWriter) halt() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

// logLineAfter returns the time of the first line of dir's daemon log at
// or after since that contains every one of parts.
func logLineAfter(t *testing.T, dir string, since time.Time, parts ...string) (time.Time, string, bool) {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, "daemon.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		ts, _, ok := strings.Cut(strings.TrimPrefix(line, "time="), " ")
		if !ok {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil || at.Before(since.Add(-time.Millisecond)) {
			continue
		}
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			return at, line, true
		}
	}
	return time.Time{}, "", false
}

// TestTamperedLink puts a relay between the hosts that, in separate cases,
// flips a byte of a write's data, drops a record, forges an ack (a record
// toward the primary) and replays a recorded earlier session. Each case
// ends the session within the peer timeout with a log line naming an
// integrity failure. No write is acknowledged that the secondary did not
// apply: the primary resyncs only the blocks it holds dirty (a write it
// counts acknowledged is clean), so after the reconnect and that resync
// the backing files are byte-identical only if every acknowledged write
// reached the secondary.
func TestTamperedLink(t *testing.T) {
	requireE2E(t)
	for _, action := range []tamper.Action{tamper.Flip, tamper.Drop, tamper.Inject, tamper.Replay} {
		t.Run(action.String(), func(t *testing.T) {
			a, b, relay, _, _ := relayedPair(t, false)
			w := startWriter(t, a)
			poll.Until(t, 10*time.Second, "writes to flow", func() bool { return w.written.Load() > 100 })
			if action == tamper.Replay {
				// The earlier session is the first connection, which
				// carried writes: end it, and replay it instead of the
				// primary's next connection.
				relay.Arm(tamper.Replay)
				relay.Cut()
			} else {
				relay.Arm(action)
			}
			at, err := relay.Wait(10 * time.Second)
			if err != nil {
				t.Fatal(err)
			}
			detector, line := b, []string{"peer connection closed", transport.ErrIntegrity.Error()}
			switch action {
			case tamper.Inject:
				detector, line = a, []string{"peer link lost", transport.ErrIntegrity.Error()}
			case tamper.Replay:
				line = []string{"peer connection rejected", transport.ErrIntegrity.Error()}
			}
			var when time.Time
			var text string
			poll.Until(t, 2*linkTimeout, "a log line naming the integrity failure", func() bool {
				var ok bool
				when, text, ok = logLineAfter(t, detector, at, line...)
				return ok
			})
			if d := when.Sub(at); d > linkTimeout {
				t.Fatalf("the session ended %v after the tampering, more than the peer timeout %v", d, linkTimeout)
			}
			t.Logf("%v after the tampering: %s", when.Sub(at).Round(time.Millisecond), text)
			// Reconnect, resync what the primary holds dirty, stop writing.
			poll.Until(t, 30*time.Second, "the primary to reconnect", func() bool {
				st, err := status(a)
				return err == nil && st.Link == node.LinkConnected
			})
			poll.Until(t, 10*time.Second, "more writes after the reconnect", func() bool { return w.written.Load() > 200 })
			w.halt()
			if w.err != nil {
				t.Fatalf("a write failed: %v", w.err)
			}
			pst := waitClean(t, a, b)
			sst, err := status(b)
			if err != nil {
				t.Fatal(err)
			}
			if pst.WritesShipped > sst.WritesApplied {
				t.Fatalf("the primary counts %d writes acknowledged, the secondary received %d", pst.WritesShipped, sst.WritesApplied)
			}
			sameBytes(t, filepath.Join(a, "volume.img"), filepath.Join(b, "volume.img"))
			t.Logf("%d writes, %d acknowledged by the peer, %d received there", w.written.Load(), pst.WritesShipped, sst.WritesApplied)
		})
	}
}

// TestRecordedLinkHidesBlocks: a relay that records every byte of the
// link while a block of a known pattern is mirrored does not see the
// pattern; with --insecure-plaintext-link it does (so the check can fail).
func TestRecordedLinkHidesBlocks(t *testing.T) {
	requireE2E(t)
	pattern := bytes.Repeat([]byte("ldmirror known pattern 0123456789 "), 2*blockSize/34+1)[:2*blockSize]
	for _, plain := range []bool{false, true} {
		t.Run(fmt.Sprintf("plaintext=%t", plain), func(t *testing.T) {
			var more []string
			if plain {
				more = []string{"--insecure-plaintext-link"}
			}
			a, b, relay, _, _ := relayedPair(t, true, more...)
			f, err := os.OpenFile(filepath.Join(a, volume.ExportDir, "volume"), os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt(pattern, 64*blockSize); err != nil {
				t.Fatal(err)
			}
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			f.Close()
			st := waitClean(t, a, b)
			got, err := os.ReadFile(filepath.Join(b, "volume.img"))
			if err != nil || !bytes.Equal(got[64*blockSize:66*blockSize], pattern) {
				t.Fatalf("the pattern did not reach the secondary (%v)", err)
			}
			if seen := bytes.Contains(relay.Recorded(), pattern[:64]); seen != plain {
				t.Fatalf("link %q: the recording of %d bytes holds the pattern: %t", st.LinkSecurity, len(relay.Recorded()), seen)
			}
			t.Logf("link %q: %d bytes recorded, pattern seen: %t", st.LinkSecurity, len(relay.Recorded()), plain)
		})
	}
}

// TestCertificateRotation: both hosts get new key pairs (pki issue) and
// SIGHUP; the running session carries on; the next session presents the
// new certificates.
func TestCertificateRotation(t *testing.T) {
	requireE2E(t)
	a, b, relay, pri, sec := relayedPair(t, false)
	creds := filepath.Join(filepath.Dir(a), "pki")
	serial := func(id string) string {
		src, err := pki.Load(pki.DirFiles(creds, id))
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("%x", src.Certificate().SerialNumber)
	}
	oldA := serial("a")
	if _, _, ok := logLineAfter(t, b, time.Time{}, "peer connected", "peer_cert_serial="+oldA); !ok {
		t.Fatal("the secondary did not log the primary's certificate serial")
	}
	start := time.Now()
	ldmirror(t, "pki", "issue", "--dir", creds, "a")
	ldmirror(t, "pki", "issue", "--dir", creds, "b")
	newA, newB := serial("a"), serial("b")
	for _, d := range []*daemon{pri, sec} {
		if err := d.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	for dir, s := range map[string]string{a: newA, b: newB} {
		poll.Until(t, 10*time.Second, "the reload in "+dir, func() bool {
			_, _, ok := logLineAfter(t, dir, start, "TLS certificate reloaded", "serial="+s)
			return ok
		})
	}
	// The running session survived: writes still go through it, on the
	// relay's one connection.
	writeBlocks(t, a, 0, 32)
	waitClean(t, a, b)
	if n := relay.Accepted(); n != 1 {
		t.Fatalf("the relay saw %d connections, want the one session", n)
	}
	if _, _, ok := logLineAfter(t, b, start, "peer connected"); ok {
		t.Fatal("a new session started at the reload")
	}
	// A new session presents the new certificates, both ways.
	relay.Cut()
	poll.Until(t, 20*time.Second, "a new session with the new certificates", func() bool {
		_, _, okB := logLineAfter(t, b, start, "peer connected", "peer_cert_serial="+newA)
		_, _, okA := logLineAfter(t, a, start, "peer connected", "peer_cert_serial="+newB)
		return okA && okB
	})
	writeBlocks(t, a, 32, 32)
	waitInSync(t, a, b)
}

// TestDataLinkIdentity: at a running secondary, a witness's certificate
// cannot open a data-link session, nor can a data host's certificate for c
// claim to be a; a daemon whose certificate names another node does not
// start.
func TestDataLinkIdentity(t *testing.T) {
	requireE2E(t)
	a, b, creds := pairDirs(t, "16MiB")
	addr := peertest.FreeAddr(t)
	startDaemon(t, b, "--role", "secondary", "--node-id", "b", "--listen", addr, "--tls-dir", creds)
	ldmirror(t, "pki", "issue", "--dir", creds, "c")
	meta, err := volume.Load(b)
	if err != nil {
		t.Fatal(err)
	}
	dial := func(id, as string) error {
		src, err := pki.Load(pki.DirFiles(creds, id))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, err := transport.Dial(ctx, addr, transport.Config{
			NodeID: as, ServerTLS: src.ServerConfig(), ClientTLS: src.ClientConfig(), PeerID: pki.DataHostID,
			VolumeUUID: meta.VolumeUUID, Size: uint64(meta.Size), BlockSize: uint32(meta.BlockSize),
		})
		if err == nil {
			s.Close()
		}
		return err
	}
	if err := dial("w", "w"); !errors.Is(err, transport.ErrPeerRefused) || !strings.Contains(err.Error(), "a witness may not open a data-link session") {
		t.Fatalf("the witness's certificate: %v", err)
	}
	if err := dial("c", "a"); !errors.Is(err, transport.ErrPeerRefused) || !strings.Contains(err.Error(), `its certificate names "c"`) {
		t.Fatalf("c's certificate claiming a: %v", err)
	}
	if err := dial("a", "a"); err != nil {
		t.Fatalf("a's own certificate: %v", err)
	}
	st, err := status(b)
	if err != nil || st.RejectedConns < 2 {
		t.Fatalf("rejected connections %d, %v; want 2", st.RejectedConns, err)
	}
	_, _, ok := logLineAfter(t, b, time.Time{}, "peer connection rejected", "witness")
	if !ok {
		t.Fatal("the secondary's log does not name the witness it refused")
	}
	out, err := runBinary("daemon", "--dir", a, "--role", "primary", "--node-id", "a", "--peer", addr,
		"--tls-ca", filepath.Join(creds, "ca.crt"), "--tls-cert", filepath.Join(creds, "c.crt"), "--tls-key", filepath.Join(creds, "c.key"))
	if err == nil || !strings.Contains(out, "names data c; this host is data host a") {
		t.Fatalf("daemon a with c's certificate: %v\n%s", err, out)
	}
}

// runBinary runs ldmirror to its end and returns its combined output.
func runBinary(args ...string) (string, error) {
	out, err := exec.Command(binary, args...).CombinedOutput()
	return string(out), err
}
