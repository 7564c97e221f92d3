package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ldmirror/ldmirror/internal/ratelog"
)

// requestPool recycles Requests, which would cost an allocation per
// replicated write otherwise.
var requestPool = sync.Pool{New: func() any { return new(Request) }}

// Listener accepts authenticated connections from the primary. Only one
// session is active at a time: a newly authenticated one replaces the old,
// so a primary that restarted does not wait for its half-open predecessor.
//
// At most Config.MaxHandshakes connections are authenticated at once; a
// connection beyond that is closed as soon as it is accepted, counted, and
// logged at most once a second, so a flood of unauthenticated connections
// costs little and cannot keep the primary out for long (each handshake
// ends within the timeout).
type Listener struct {
	ln  net.Listener
	cfg Config
	log *slog.Logger

	mu       sync.Mutex
	active   *ServerSession
	accepted uint64 // connections accepted so far; guarded by mu
	wg       sync.WaitGroup

	slots    chan struct{} // one per handshake in progress
	shedLog  *ratelog.Counter
	rejected atomic.Uint64
	shed     atomic.Uint64
}

// Listen opens a listener on addr.
func Listen(addr string, cfg Config) (*Listener, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if !c.InsecurePlaintext && c.ServerTLS == nil {
		return nil, errors.New("listen: no server TLS configuration")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &Listener{
		ln: ln, cfg: c, log: c.Logger,
		slots:   make(chan struct{}, c.MaxHandshakes),
		shedLog: ratelog.New(time.Second),
	}, nil
}

// Addr is the address the listener accepts on.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Rejected counts connections closed because of a handshake or protocol
// error, or because too many were being authenticated at once.
func (l *Listener) Rejected() uint64 { return l.rejected.Load() }

// Shed counts connections closed unread because MaxHandshakes others were
// being authenticated.
func (l *Listener) Shed() uint64 { return l.shed.Load() }

// Active returns the current session, or nil.
func (l *Listener) Active() *ServerSession {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.active
}

// Serve accepts connections and hands their requests to h until ctx ends or
// the listener is closed. A bad connection is logged and closed; Serve keeps
// running. Serve waits for its sessions to end before it returns.
func (l *Listener) Serve(ctx context.Context, h Handler) error {
	stop := context.AfterFunc(ctx, func() { l.ln.Close() })
	defer stop()
	defer l.wg.Wait()
	for {
		conn, err := l.ln.Accept()
		if err != nil {
			l.mu.Lock()
			if l.active != nil {
				l.active.fail(ErrClosed)
			}
			l.mu.Unlock()
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		select {
		case l.slots <- struct{}{}:
		default:
			// Counted and logged before the close: a client that sees the
			// close sees both, at the clock of its own connection.
			l.rejected.Add(1)
			l.shed.Add(1)
			if n := l.shedLog.Note(); n > 0 {
				l.log.Warn("too many unauthenticated connections: closed at once", "closed", n, "limit", cap(l.slots), "remote", conn.RemoteAddr().String())
			}
			conn.Close()
			continue
		}
		l.mu.Lock()
		l.accepted++
		seq := l.accepted
		l.mu.Unlock()
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.serveConn(ctx, conn, seq, h)
		}()
	}
}

// Close stops accepting and ends the active session.
func (l *Listener) Close() error { return l.ln.Close() }

// serveConn authenticates raw, the seq-th connection accepted, and serves
// it until it ends.
func (l *Listener) serveConn(ctx context.Context, raw net.Conn, seq uint64, h Handler) {
	remote := raw.RemoteAddr().String()
	tuneConn(raw)
	_ = raw.SetDeadline(time.Now().Add(l.cfg.Timeout))
	conn, certID, err := secure(ctx, raw, &l.cfg, false)
	var peer Hello
	var fr *FrameReader
	if err == nil {
		fr = NewFrameReader(conn)
		peer, err = handshake(conn, fr, &l.cfg, false, certID)
	}
	<-l.slots
	if err == nil {
		fr.sealed = !l.cfg.InsecurePlaintext
	}
	if errors.Is(err, ErrNotReady) {
		// Not an error of the peer's: it is told to come back soon.
		l.log.Info("peer connection refused: not ready yet", "remote", remote, "node", peer.NodeID, "err", err)
		raw.Close()
		return
	}
	if err != nil {
		l.rejected.Add(1)
		l.log.Warn("peer connection rejected", "remote", remote, "err", err)
		raw.Close()
		return
	}
	s := &ServerSession{
		cfg:      l.cfg,
		conn:     conn,
		raw:      raw,
		fr:       fr,
		peer:     peer,
		kick:     make(chan struct{}, 1),
		slot:     make(chan struct{}, l.cfg.Window),
		done:     make(chan struct{}),
		accepted: seq,
	}
	l.mu.Lock()
	old := l.active
	if old != nil && old.accepted > seq {
		// A newer connection finished its handshake first: this one is
		// the primary's older attempt, and must not replace it.
		l.mu.Unlock()
		l.log.Warn("peer connection dropped: a newer one from the primary is active", "remote", remote, "node", peer.NodeID)
		conn.Close()
		return
	}
	l.active = s
	l.mu.Unlock()
	if old != nil {
		old.fail(errors.New("replaced by a new connection from the primary"))
	}
	l.log.Info("peer connected", append([]any{"remote", remote, "node", peer.NodeID}, securityAttrs(conn)...)...)
	err = s.run(h)
	l.mu.Lock()
	if l.active == s {
		l.active = nil
	}
	l.mu.Unlock()
	if errors.Is(err, ErrClosed) {
		return
	}
	if isProtocolError(err) {
		l.rejected.Add(1)
	}
	l.log.Warn("peer connection closed", "remote", remote, "node", peer.NodeID, "err", err)
}

func isProtocolError(err error) bool {
	for _, e := range []error{ErrBadMagic, ErrChecksum, ErrFrameTooLarge, ErrTruncated, ErrUnknownType, ErrMalformed, ErrUnexpected, ErrStaleEpoch, ErrIntegrity} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// ServerSession is the secondary's end of a peer connection.
type ServerSession struct {
	cfg  Config
	conn net.Conn // the TLS connection, or raw on a plaintext link
	raw  net.Conn
	fr   *FrameReader
	peer Hello

	slot chan struct{} // bounds requests handed to the Handler and not yet Done

	// Acks are encoded into ackBuf as requests finish and sent in batches,
	// so a burst of requests costs one send and one wakeup of the primary:
	// the reader sends them before it waits for more input, and the
	// writeLoop (kicked) sends those that finish while it waits.
	ackMu    sync.Mutex
	ackBuf   []byte
	sendMu   sync.Mutex // one batch on the wire at a time; guards spare
	spare    []byte
	draining atomic.Bool // the reader handles buffered input and sends acks before it waits
	kick     chan struct{}

	mu      sync.Mutex
	err     error
	done    chan struct{}
	lastSeq uint64

	applied  atomic.Uint64
	lastRecv atomic.Int64
	accepted uint64 // the listener's count of connections when it accepted this one
}

// Peer is the Hello the primary sent.
func (s *ServerSession) Peer() Hello { return s.peer }

// Security describes the session's protection (see Session.Security).
func (s *ServerSession) Security() string { return security(s.conn) }

// TLS returns the session's TLS state; false on a plaintext link.
func (s *ServerSession) TLS() (tls.ConnectionState, bool) { return connState(s.conn) }

// Close ends the session, telling the primary why.
func (s *ServerSession) Close(reason error) {
	s.fail(refuse(s.conn, s.cfg.Epoch, reason, maxErrorText))
}

// Received is the number of requests received and acknowledged.
func (s *ServerSession) Received() uint64 { return s.applied.Load() }

func (s *ServerSession) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return
	}
	s.err = err
	close(s.done)
	// The socket, not the TLS layer: its Close may wait to send a
	// close_notify to a peer that does not read.
	s.raw.Close()
}

func (s *ServerSession) ack(seq uint64, body []byte, err error) {
	status := uint32(AckOK)
	switch {
	case errors.Is(err, ErrReplyTooLarge):
		status, body = AckTooLarge, errorPayload(err.Error())
	case err != nil:
		status, body = AckIOError, errorPayload(err.Error())
	}
	var p [4 + maxErrorText]byte
	s.queueAck(Header{Type: TypeAck, Seq: seq, Epoch: s.cfg.Epoch}, ackPayload(p[:0], status, body))
	<-s.slot
}

// queueAck encodes a frame for the primary into the ack batch and makes
// sure someone sends it: the reader, if it is draining its input, or else
// the writeLoop.
func (s *ServerSession) queueAck(h Header, payload []byte) {
	s.ackMu.Lock()
	s.ackBuf = AppendFrame(s.ackBuf, h, payload)
	s.ackMu.Unlock()
	if !s.draining.Load() {
		select {
		case s.kick <- struct{}{}:
		default: // already kicked
		}
	}
}

// sendAcks writes the batched acks, if any.
func (s *ServerSession) sendAcks() error {
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	s.ackMu.Lock()
	buf := s.ackBuf
	s.ackBuf = s.spare[:0]
	s.ackMu.Unlock()
	s.spare = buf[:0]
	if len(buf) == 0 {
		return nil
	}
	if _, err := s.conn.Write(buf); err != nil {
		return fmt.Errorf("send to primary: %w", linkError(err))
	}
	return nil
}

func (s *ServerSession) run(h Handler) error {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); s.writeLoop() }()
	go func() { defer wg.Done(); s.watchdog() }()
	s.readLoop(h)
	wg.Wait()
	return s.err
}

func (s *ServerSession) readLoop(h Handler) {
	s.lastRecv.Store(time.Now().UnixNano())
	var lc *linkConn
	if tc, ok := s.conn.(*tls.Conn); ok {
		lc, _ = tc.NetConn().(*linkConn)
	}
	for {
		if s.fr.Buffered() == 0 && (lc == nil || !lc.ready()) {
			// About to wait: send what the requests read so far produced.
			// After the store, acks that come later kick the writeLoop.
			s.draining.Store(false)
			if err := s.sendAcks(); err != nil {
				s.fail(err)
				return
			}
		}
		hd, err := s.fr.ReadHeader()
		if err != nil {
			s.fail(fmt.Errorf("read from primary: %w", linkError(err)))
			return
		}
		s.draining.Store(true)
		s.lastRecv.Store(time.Now().UnixNano())
		if hd.Epoch != s.peer.Epoch {
			s.fail(refuse(s.conn, s.cfg.Epoch, fmt.Errorf("%w: frame epoch %d, session epoch %d", ErrStaleEpoch, hd.Epoch, s.peer.Epoch), maxErrorText))
			return
		}
		if err := s.readRequest(hd, h); err != nil {
			s.fail(linkError(err))
			return
		}
	}
}

// readRequest reads the payload of one frame and dispatches it.
func (s *ServerSession) readRequest(hd Header, h Handler) error {
	if hd.Type == TypePing {
		if err := s.fr.ReadPayload(hd, nil); err != nil {
			return err
		}
		s.queueAck(Header{Type: TypePong, Epoch: s.cfg.Epoch}, nil)
		return nil
	}
	var kind Kind
	switch hd.Type {
	case TypeWrite:
		kind = KindWrite
	case TypeTrim:
		kind = KindTrim
	case TypeFlush:
		kind = KindFlush
	case TypeGeneration:
		kind = KindGeneration
	case TypeChecksum:
		kind = KindChecksum
	case TypeOutOfSync:
		kind = KindOutOfSync
	case TypeProgress:
		kind = KindProgress
	case TypeStage:
		kind = KindStage
	case TypeJournal:
		// the operation's kind is in the payload
	case TypeError:
		p := make([]byte, hd.Length)
		if err := s.fr.ReadPayload(hd, p); err != nil {
			return err
		}
		return fmt.Errorf("%w: %s", ErrPeerRefused, p)
	default:
		return fmt.Errorf("%w: %s from primary", ErrUnexpected, hd.Type)
	}
	if s.lastSeq != 0 && hd.Seq != s.lastSeq+1 {
		return fmt.Errorf("%w: seq %d after %d", ErrUnexpected, hd.Seq, s.lastSeq)
	}
	buf := getBuf(hd.Length)
	if err := s.fr.ReadPayload(hd, *buf); err != nil {
		putBuf(buf)
		return err
	}
	var req Request
	var err error
	if hd.Type == TypeJournal {
		req, err = parseJournal(hd, (*buf)[:hd.Length], s.peer.Size)
	} else {
		req, err = parseRequest(kind, hd, (*buf)[:hd.Length], s.peer.Size)
	}
	if err == nil && kind == KindChecksum && req.Length > MaxChecksumBlocks*int64(s.cfg.BlockSize) {
		err = fmt.Errorf("%w: checksum of %d bytes, at most %d blocks", ErrMalformed, req.Length, MaxChecksumBlocks)
	}
	if err != nil {
		putBuf(buf)
		return err
	}
	s.lastSeq = hd.Seq
	select {
	case s.slot <- struct{}{}:
	case <-s.done:
		putBuf(buf)
		return s.err
	}
	s.applied.Add(1)
	r := requestPool.Get().(*Request)
	*r = req
	r.sess, r.buf = s, buf
	h.Handle(r)
	return nil
}

// Journal frame layout: a prefix, then a write's data or a trim's length.
const (
	journalPrefix  = 32 // id, seq, kind, flags, 6 reserved bytes, offset
	journalOrdered = 1  // flag: apply alone, in order
)

func (s *ServerSession) writeLoop() {
	for {
		select {
		case <-s.kick:
		case <-s.done:
			return
		}
		if err := s.sendAcks(); err != nil {
			s.fail(err)
			return
		}
	}
}

// watchdog closes a session whose primary went silent (it pings when idle).
func (s *ServerSession) watchdog() {
	watch(s.cfg.Timeout, s.done, &s.lastRecv, nil, s.fail)
}

// watch calls fail once the peer has sent nothing for timeout, or oldest
// (if not nil) reports a request that has waited that long for its ack;
// it returns then or when done is closed. It sleeps until the earlier of
// the two deadlines, last frame + timeout and oldest request + timeout,
// and looks again when it wakes: a frame or an ack that came meanwhile
// moves the deadline, and a request sent later cannot be due before it.
// So the session breaks at the timeout, not up to a polling period later
// (docs/journal.md bounds what an async primary acknowledges by it).
func watch(timeout time.Duration, done <-chan struct{}, lastRecv *atomic.Int64, oldest func() (time.Time, bool), fail func(error)) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		now := time.Now()
		next := time.Unix(0, lastRecv.Load()).Add(timeout)
		if !now.Before(next) {
			fail(fmt.Errorf("%w (%v)", ErrPeerSilent, timeout))
			return
		}
		if oldest != nil {
			if sent, ok := oldest(); ok {
				due := sent.Add(timeout)
				if !now.Before(due) {
					fail(fmt.Errorf("%w (%v)", ErrAckTimeout, timeout))
					return
				}
				if due.Before(next) {
					next = due
				}
			}
		}
		t.Reset(next.Sub(now))
		select {
		case <-done:
			return
		case <-t.C:
		}
	}
}
