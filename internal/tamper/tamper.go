// Package tamper is an on-path attacker for tests: a TCP relay between a
// primary and its secondary that records every byte and, when armed,
// flips a byte of a TLS record, drops a record, injects a forged one, or
// replays an earlier session's bytes. It parses TLS record framing (RFC
// 8446 §5.1: type, version, 16-bit length) to act at record boundaries;
// with Raw it copies bytes without parsing, to record a plaintext link.
package tamper

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"time"
)

// Action is what the relay does to the next record it acts on.
type Action int

// Actions. Flip and Drop act on the next application-data record from the
// client (the primary) of at least MinRecord bytes, which carries write
// data; Inject forges a record toward the client (an ack, as far as the
// relay can pretend) before the next one from the server; Replay plays the
// first connection's recorded client bytes to the server on the next
// connection instead of relaying it.
const (
	Pass Action = iota
	Flip
	Drop
	Inject
	Replay
)

func (a Action) String() string {
	return [...]string{"pass", "flip a byte", "drop a record", "inject a forged record", "replay an earlier session"}[a]
}

// MinRecord is the smallest record Flip and Drop act on: a 4 KiB write and
// its frame header, sealed.
const MinRecord = 4096

// recordCap bounds what the relay keeps of the traffic.
const recordCap = 64 << 20

// Relay accepts on a loopback port and relays each connection to Target.
type Relay struct {
	ln     net.Listener
	target string
	raw    bool

	mu       sync.Mutex
	action   Action
	fired    chan time.Time
	first    []byte // the first connection's client bytes, for Replay
	firstEnd bool   // the first connection ended: first is complete
	all      bytes.Buffer
	conns    map[net.Conn]struct{}
	closed   bool
	wg       sync.WaitGroup
	accepted int
}

// New starts a relay to target. With raw it copies bytes without parsing
// records (and cannot be armed).
func New(target string, raw bool) (*Relay, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &Relay{ln: ln, target: target, raw: raw, fired: make(chan time.Time, 1), conns: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go r.serve()
	return r, nil
}

// Addr is where the primary should dial.
func (r *Relay) Addr() string { return r.ln.Addr().String() }

// Arm makes the relay perform a once; Fired receives the time it did.
func (r *Relay) Arm(a Action) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.action = a
}

// Fired receives the time the armed action was performed.
func (r *Relay) Fired() <-chan time.Time { return r.fired }

// Recorded returns every byte relayed so far, both directions (up to
// 64 MiB).
func (r *Relay) Recorded() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Clone(r.all.Bytes())
}

// Accepted is the number of connections accepted so far.
func (r *Relay) Accepted() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.accepted
}

// Cut closes the connections being relayed: both ends see the link drop.
func (r *Relay) Cut() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for c := range r.conns {
		c.Close()
	}
}

// Close stops the relay and waits for its goroutines.
func (r *Relay) Close() error {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	err := r.ln.Close()
	r.Cut()
	r.wg.Wait()
	return err
}

func (r *Relay) serve() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.mu.Lock()
		r.accepted++
		n := r.accepted
		replay := r.action == Replay && r.firstEnd
		if replay {
			r.action = Pass
		}
		r.mu.Unlock()
		r.wg.Add(1)
		if replay {
			go r.replay(c)
		} else {
			go r.relay(c, n == 1)
		}
	}
}

// track registers c to be closed by Cut; false once the relay is closed.
func (r *Relay) track(cs ...net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	for _, c := range cs {
		r.conns[c] = struct{}{}
	}
	return true
}

func (r *Relay) untrack(cs ...net.Conn) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range cs {
		delete(r.conns, c)
		c.Close()
	}
}

func (r *Relay) relay(client net.Conn, first bool) {
	defer r.wg.Done()
	server, err := net.Dial("tcp", r.target)
	if err != nil {
		client.Close()
		return
	}
	if !r.track(client, server) {
		client.Close()
		server.Close()
		return
	}
	defer r.untrack(client, server)
	done := make(chan struct{}, 2)
	go func() { r.pump(client, server, true, first); done <- struct{}{} }()
	go func() { r.pump(server, client, false, false); done <- struct{}{} }()
	<-done // one side ended: end both
	client.Close()
	server.Close()
	<-done
	if first {
		r.mu.Lock()
		r.firstEnd = true
		r.mu.Unlock()
	}
}

// replay closes the client's connection and plays the first connection's
// client bytes to the server, then reads what the server says until it
// closes.
func (r *Relay) replay(client net.Conn) {
	defer r.wg.Done()
	client.Close()
	server, err := net.Dial("tcp", r.target)
	if err != nil {
		return
	}
	if !r.track(server) {
		server.Close()
		return
	}
	defer r.untrack(server)
	r.mu.Lock()
	rec := bytes.Clone(r.first)
	r.mu.Unlock()
	r.fire()
	_, _ = server.Write(rec)
	_ = server.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, _ = io.Copy(io.Discard, server)
}

func (r *Relay) fire() {
	select {
	case r.fired <- time.Now():
	default:
	}
}

func (r *Relay) keep(b []byte, fromClient, first bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.all.Len()+len(b) <= recordCap {
		r.all.Write(b)
	}
	if fromClient && first && len(r.first)+len(b) <= recordCap {
		r.first = append(r.first, b...)
	}
}

// take returns the armed action if it applies to this direction and
// disarms it.
func (r *Relay) take(fromClient bool, typ byte, n int) Action {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch a := r.action; {
	case fromClient && (a == Flip || a == Drop) && typ == 23 && n >= MinRecord,
		!fromClient && a == Inject && typ == 23:
		r.action = Pass
		return a
	}
	return Pass
}

// pump copies src to dst, record by record unless raw.
func (r *Relay) pump(src, dst net.Conn, fromClient, first bool) {
	if r.raw {
		buf := make([]byte, 64<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				r.keep(buf[:n], fromClient, first)
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}
	hdr := make([]byte, 5)
	for {
		if _, err := io.ReadFull(src, hdr); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint16(hdr[3:5]))
		rec := make([]byte, 5+n)
		copy(rec, hdr)
		if _, err := io.ReadFull(src, rec[5:]); err != nil {
			return
		}
		r.keep(rec, fromClient, first)
		switch r.take(fromClient, hdr[0], n) {
		case Flip:
			rec[5+n/2] ^= 0x01
			r.fire()
		case Drop:
			r.fire()
			continue
		case Inject:
			forged := make([]byte, 5+64)
			copy(forged, []byte{23, 3, 3, 0, 64})
			_, _ = rand.Read(forged[5:])
			// Fired before the write: the peer may log the failure
			// before this goroutine runs again.
			r.fire()
			if _, err := dst.Write(forged); err != nil {
				return
			}
		}
		if _, err := dst.Write(rec); err != nil {
			return
		}
	}
}

// ErrNotFired is returned by Wait when the armed action did not happen in
// time.
var ErrNotFired = errors.New("tamper: the armed action did not happen")

// Wait returns the time the armed action happened, or ErrNotFired after
// limit.
func (r *Relay) Wait(limit time.Duration) (time.Time, error) {
	select {
	case t := <-r.fired:
		return t, nil
	case <-time.After(limit):
		return time.Time{}, ErrNotFired
	}
}
