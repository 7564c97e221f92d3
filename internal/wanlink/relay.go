package wanlink

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"time"
)

// Config is the emulated link.
type Config struct {
	// RTT is the round trip the relay adds: each direction is delayed by
	// half of it.
	RTT time.Duration
	// Jitter is the most a chunk's one-way delay varies, up or down.
	Jitter time.Duration
	// Bandwidth caps each direction, in bytes per second; 0: no cap.
	Bandwidth int64
	// Queue bounds the bytes in flight per direction (default 64 MiB).
	Queue int64
}

// DefaultQueue holds 30 ms of a 10 Gbit/s link's data, more than any
// round trip the benchmarks use needs at the bandwidths they cap to.
const DefaultQueue = 64 << 20

// Relay accepts connections on a local address and relays each one to the
// target through the emulated link.
type Relay struct {
	cfg    Config
	target string
	ln     net.Listener

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// Listen starts a relay to target on a free port of 127.0.0.1.
func Listen(target string, cfg Config) (*Relay, error) {
	if cfg.RTT < 0 || cfg.Jitter < 0 || cfg.Bandwidth < 0 || cfg.Queue < 0 {
		return nil, fmt.Errorf("wanlink: negative setting in %+v", cfg)
	}
	if cfg.Queue == 0 {
		cfg.Queue = DefaultQueue
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("wanlink: %w", err)
	}
	r := &Relay{cfg: cfg, target: target, ln: ln, conns: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go r.accept()
	return r, nil
}

// Addr is where the relay listens: dial it instead of the target.
func (r *Relay) Addr() string { return r.ln.Addr().String() }

// Close stops accepting, cuts every relayed connection and waits for the
// relay's goroutines.
func (r *Relay) Close() error {
	err := r.ln.Close()
	r.mu.Lock()
	r.closed = true
	for c := range r.conns {
		c.Close()
	}
	r.mu.Unlock()
	r.wg.Wait()
	return err
}

func (r *Relay) accept() {
	defer r.wg.Done()
	for {
		in, err := r.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", r.target)
		if err != nil {
			in.Close()
			continue
		}
		if !r.track(in, out) {
			return
		}
		r.wg.Add(2)
		go r.pipe(in, out)
		go r.pipe(out, in)
	}
}

// track registers a relayed pair of connections, or closes them if the
// relay is closing.
func (r *Relay) track(cs ...net.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	for _, c := range cs {
		r.conns[c] = struct{}{}
	}
	return true
}

// pipe relays one direction; when either side ends, both connections close.
func (r *Relay) pipe(src, dst net.Conn) {
	defer r.wg.Done()
	l := newLine(r.cfg)
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.deliver(dst)
		src.Close() // the far side is gone: stop reading too
	}()
	l.fill(src)
	<-done
	dst.Close()
	r.mu.Lock()
	delete(r.conns, src)
	delete(r.conns, dst)
	r.mu.Unlock()
}

// chunk is bytes read at one time (at), due at the far end at due, if
// the link's rate lets it.
type chunk struct {
	b       []byte
	at, due time.Time
}

// line is one direction of the link: a queue of chunks in flight.
type line struct {
	cfg  Config
	half time.Duration
	rng  *rand.Rand

	mu      sync.Mutex
	cond    *sync.Cond
	q       []chunk
	queued  int64
	ended   bool // the reader stopped
	broken  bool // the writer stopped
	lastDue time.Time
}

func newLine(cfg Config) *line {
	l := &line{cfg: cfg, half: cfg.RTT / 2, rng: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))}
	l.cond = sync.NewCond(&l.mu)
	return l
}

// fill reads src into the queue until src ends or the writer stopped.
func (l *line) fill(src io.Reader) {
	buf := make([]byte, 256<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !l.push(buf[:n], time.Now()) {
			return
		}
		if err != nil {
			l.mu.Lock()
			l.ended = true
			l.cond.Broadcast()
			l.mu.Unlock()
			return
		}
	}
}

// push queues a copy of b, read at t; false if the writer stopped.
func (l *line) push(b []byte, t time.Time) bool {
	due := t.Add(l.half)
	if j := l.cfg.Jitter; j > 0 {
		due = due.Add(time.Duration(l.rng.Int64N(int64(2*j)+1)) - j)
		if due.Before(t) {
			due = t
		}
	}
	c := chunk{b: append([]byte(nil), b...), at: t}
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.queued > 0 && l.queued+int64(len(b)) > l.cfg.Queue && !l.broken {
		l.cond.Wait()
	}
	if l.broken {
		return false
	}
	if due.Before(l.lastDue) { // in order, as TCP delivers
		due = l.lastDue
	}
	c.due, l.lastDue = due, due
	l.q = append(l.q, c)
	l.queued += int64(len(b))
	l.cond.Broadcast()
	return true
}

// deliver writes the queued chunks to dst when they are due, at most at
// the capped rate, until the reader ended and the queue is empty.
func (l *line) deliver(dst io.Writer) {
	var free time.Time // when the capped link finished sending what it took
	for {
		l.mu.Lock()
		for len(l.q) == 0 && !l.ended {
			l.cond.Wait()
		}
		if len(l.q) == 0 {
			l.mu.Unlock()
			return
		}
		c := l.q[0]
		l.q[0] = chunk{}
		l.q = l.q[1:]
		l.mu.Unlock()

		at := c.due
		if bw := l.cfg.Bandwidth; bw > 0 {
			// Sent once the link is free, whole after len/bw, then the delay.
			free = later(c.at, free).Add(time.Duration(int64(len(c.b)) * int64(time.Second) / bw))
			at = later(at, free.Add(l.half))
		}
		if d := time.Until(at); d > 0 {
			time.Sleep(d)
		}
		_, err := dst.Write(c.b)
		l.mu.Lock()
		l.queued -= int64(len(c.b))
		if err != nil {
			l.broken = true
		}
		l.cond.Broadcast()
		l.mu.Unlock()
		if err != nil {
			return
		}
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
