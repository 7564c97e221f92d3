package transport

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Session errors.
var (
	ErrDisconnected = errors.New("peer link lost")
	ErrAckTimeout   = errors.New("no ack from peer within the timeout")
	ErrPeerSilent   = errors.New("peer sent nothing within the timeout")
	ErrRemoteIO     = errors.New("peer failed to apply the request")
	// ErrReplyTooLarge: the peer's reply to a request would not fit in
	// one frame (a handler returns it, the primary gets it back).
	ErrReplyTooLarge = errors.New("reply too large for one frame")
	ErrClosed        = errors.New("session closed")
)

// Call is one request in flight on a Session. Wait must be called exactly
// once for every Call returned by a Session.
type Call struct {
	frame  [HeaderSize + max(journalPrefix+8, checksumRequestSize)]byte // header plus the offset and trim length, the generations, a checksum request or a journal prefix
	nframe int
	kind   Type
	jkind  Kind // the operation of a journal frame
	data   []byte
	reply  []byte // the ack's body, for a checksum request
	seq    uint64
	sentAt time.Time
	result chan error
}

var callPool = sync.Pool{New: func() any { return &Call{result: make(chan error, 1)} }}

// Wait blocks until the peer acknowledged the request or the session broke.
// The Call must not be used afterwards.
func (c *Call) Wait() error {
	_, err := c.WaitReply()
	return err
}

// WaitReply is Wait for a request whose ack carries a reply.
func (c *Call) WaitReply() ([]byte, error) {
	err := <-c.result
	reply := c.reply
	c.data, c.reply = nil, nil
	callPool.Put(c)
	return reply, err
}

// SessionStats are counters of one session.
type SessionStats struct {
	Writes   uint64 // write and trim requests acknowledged
	Bytes    uint64 // data bytes acknowledged
	Flushes  uint64 // flush barriers acknowledged
	InFlight int    // requests sent and not yet acknowledged
	Window   int    // the maximum of InFlight
}

// Session is the primary's end of an authenticated peer connection. It is
// safe for concurrent use: callers Submit requests and Wait for their acks,
// which may arrive out of order.
type Session struct {
	cfg    Config
	conn   net.Conn // the TLS connection, or raw on a plaintext link
	raw    net.Conn
	sealed bool // a TLS link: frames carry no checksum
	fr     *FrameReader
	peer   Hello

	window chan struct{}
	sendq  chan *Call

	mu      sync.Mutex
	nextSeq uint64
	pending map[uint64]*Call
	err     error

	done     chan struct{}
	lastRecv atomic.Int64 // unix nanoseconds of the last frame from the peer
	writes   atomic.Uint64
	bytes    atomic.Uint64
	flushes  atomic.Uint64

	workers  sync.WaitGroup // reader, writer, watchdog
	finished chan struct{}  // closed once every pending call has its result
}

// Dial connects to the peer at addr and runs the handshake.
func Dial(ctx context.Context, addr string, cfg Config) (*Session, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if !c.InsecurePlaintext && c.ClientTLS == nil {
		return nil, errors.New("dial: no client TLS configuration")
	}
	d := net.Dialer{Timeout: c.Timeout}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	tuneConn(raw)
	conn, certID, err := secure(ctx, raw, &c, true)
	if err != nil {
		raw.Close()
		return nil, err
	}
	fr := NewFrameReader(conn)
	peer, err := handshake(conn, fr, &c, true, certID)
	if err != nil {
		raw.Close()
		return nil, err
	}
	fr.sealed = !c.InsecurePlaintext
	s := &Session{
		cfg:      c,
		conn:     conn,
		raw:      raw,
		sealed:   !c.InsecurePlaintext,
		fr:       fr,
		peer:     peer,
		window:   make(chan struct{}, c.Window),
		sendq:    make(chan *Call, c.Window),
		nextSeq:  1,
		pending:  make(map[uint64]*Call, c.Window),
		done:     make(chan struct{}),
		finished: make(chan struct{}),
	}
	s.lastRecv.Store(time.Now().UnixNano())
	s.workers.Add(3)
	go s.readLoop()
	go s.writeLoop()
	go s.watchdog()
	go func() {
		s.workers.Wait()
		s.failPending()
	}()
	return s, nil
}

// Peer is the Hello the peer sent.
func (s *Session) Peer() Hello { return s.peer }

// TLS returns the session's TLS state; false on a plaintext link.
func (s *Session) TLS() (tls.ConnectionState, bool) { return connState(s.conn) }

// Security describes the session's protection: the TLS version and
// cipher suite, or that the link is plaintext.
func (s *Session) Security() string { return security(s.conn) }

// SecurityAttrs are the session's TLS version, cipher suite and the peer
// certificate's serial, as log attributes; "tls off" on a plaintext link.
func (s *Session) SecurityAttrs() []any { return securityAttrs(s.conn) }

// Done is closed when the session broke or was closed.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err says why the session ended, or nil while it runs.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Stats returns the session's counters.
func (s *Session) Stats() SessionStats {
	s.mu.Lock()
	inflight := len(s.pending)
	s.mu.Unlock()
	return SessionStats{
		Writes:   s.writes.Load(),
		Bytes:    s.bytes.Load(),
		Flushes:  s.flushes.Load(),
		InFlight: inflight,
		Window:   s.cfg.Window,
	}
}

// SubmitWrite ships data to be written at off on the peer. data must stay
// unchanged until Wait returns.
func (s *Session) SubmitWrite(off int64, data []byte) (*Call, error) {
	if len(data) == 0 || len(data) > MaxWrite {
		return nil, fmt.Errorf("write of %d bytes: must be 1 to %d bytes", len(data), MaxWrite)
	}
	return s.submit(TypeWrite, off, 0, data)
}

// SubmitTrim asks the peer to discard n bytes at off.
func (s *Session) SubmitTrim(off, n int64) (*Call, error) {
	return s.submit(TypeTrim, off, n, nil)
}

// SubmitFlush sends a barrier: its ack means every request submitted before
// it was applied and made durable on the peer.
func (s *Session) SubmitFlush() (*Call, error) {
	return s.submit(TypeFlush, 0, 0, nil)
}

// SubmitGeneration tells the peer the generation identifiers to adopt after
// it caught up; its ack means the peer persisted them. Submit a flush first
// and wait for it, so that the peer holds every earlier write durably.
func (s *Session) SubmitGeneration(g [4]uint64) (*Call, error) {
	return s.submit(TypeGeneration, 0, 0, nil, g[:]...)
}

// SubmitProgress tells the target of a resync how far it got (see
// KindProgress).
func (s *Session) SubmitProgress(p Progress) (*Call, error) {
	return s.submit(TypeProgress, 0, 0, nil, p.words()...)
}

// SubmitChecksum asks the peer for a digest, keyed with key, of each of the
// blocks of blockSize bytes in n bytes at off (at most MaxChecksumBlocks
// blocks), read after every earlier overlapping write was applied.
// WaitReply returns them, ChecksumDigestSize bytes a block. Draw a new
// random key for every request (see doc.go).
func (s *Session) SubmitChecksum(off, n int64, key *[ChecksumKeySize]byte) (*Call, error) {
	if n <= 0 || n > MaxChecksumBlocks*int64(s.cfg.BlockSize) {
		return nil, fmt.Errorf("checksum of %d bytes: must be 1 to %d blocks", n, MaxChecksumBlocks)
	}
	c, err := s.acquire()
	if err != nil {
		return nil, err
	}
	c.data, c.kind, c.jkind = nil, TypeChecksum, 0
	putChecksumRequest(c.frame[HeaderSize:], off, n, key)
	return s.enqueue(c, TypeChecksum, checksumRequestSize)
}

// SubmitOutOfSync asks the peer which blocks it knows may differ from this
// host (see KindOutOfSync). WaitReply returns a portable roaring bitmap.
func (s *Session) SubmitOutOfSync() (*Call, error) {
	return s.submit(TypeOutOfSync, 0, 0, nil)
}

// JournalOp is a write, trim or flush taken from the primary's journal
// (async mode), with its place in the journal.
type JournalOp struct {
	ID      uint64 // the journal's identity
	Seq     uint64 // its sequence number in that journal
	Kind    Kind   // KindWrite, KindTrim or KindFlush
	Ordered bool   // apply after every earlier request and before any later one
	Offset  int64
	Length  int64  // bytes trimmed (a write's length is len(Data))
	Data    []byte // a write's data; unchanged until Wait returns
}

// SubmitJournal ships a journaled operation (a Journal frame): the peer
// applies it like a write, trim or flush and records op.Seq as applied. The
// ack of a flush carries the peer's durable applied journal position (see
// Request.Reply).
func (s *Session) SubmitJournal(op JournalOp) (*Call, error) {
	switch op.Kind {
	case KindWrite:
		if len(op.Data) == 0 || len(op.Data) > MaxWrite {
			return nil, fmt.Errorf("journal write of %d bytes: must be 1 to %d bytes", len(op.Data), MaxWrite)
		}
	case KindTrim:
		if op.Length <= 0 || op.Data != nil {
			return nil, fmt.Errorf("journal trim of %d bytes", op.Length)
		}
	case KindFlush:
		if op.Offset != 0 || op.Length != 0 || op.Data != nil {
			return nil, errors.New("journal flush with a range or data")
		}
	default:
		return nil, fmt.Errorf("journal operation %s", op.Kind)
	}
	c, err := s.acquire()
	if err != nil {
		return nil, err
	}
	c.data, c.kind, c.jkind = op.Data, TypeJournal, op.Kind
	p := c.frame[HeaderSize:]
	binary.BigEndian.PutUint64(p[0:8], op.ID)
	binary.BigEndian.PutUint64(p[8:16], op.Seq)
	p[16], p[17] = byte(op.Kind), 0
	if op.Ordered {
		p[17] = journalOrdered
	}
	clear(p[18:24])
	binary.BigEndian.PutUint64(p[24:32], uint64(op.Offset))
	plen := journalPrefix
	if op.Kind == KindTrim {
		binary.BigEndian.PutUint64(p[32:40], uint64(op.Length))
		plen += 8
	}
	return s.enqueue(c, TypeJournal, plen)
}

// acquire takes a window slot and a Call.
func (s *Session) acquire() (*Call, error) {
	select {
	case s.window <- struct{}{}:
	case <-s.done:
		return nil, s.Err()
	}
	return callPool.Get().(*Call), nil
}

func (s *Session) submit(t Type, off, n int64, data []byte, words ...uint64) (*Call, error) {
	c, err := s.acquire()
	if err != nil {
		return nil, err
	}
	c.data, c.kind, c.jkind = data, t, 0
	var plen int
	switch t {
	case TypeWrite:
		binary.BigEndian.PutUint64(c.frame[HeaderSize:], uint64(off))
		plen = 8
	case TypeTrim:
		binary.BigEndian.PutUint64(c.frame[HeaderSize:], uint64(off))
		binary.BigEndian.PutUint64(c.frame[HeaderSize+8:], uint64(n))
		plen = 16
	case TypeGeneration, TypeProgress:
		for i, g := range words {
			binary.BigEndian.PutUint64(c.frame[HeaderSize+8*i:], g)
		}
		plen = 8 * len(words)
	}
	return s.enqueue(c, t, plen)
}

// enqueue numbers c, whose payload prefix of plen bytes is in its frame,
// and queues it for the writer.
func (s *Session) enqueue(c *Call, t Type, plen int) (*Call, error) {
	data := c.data
	c.nframe = HeaderSize + plen

	// On a TLS link every record is authenticated (AES-GCM's tag), so a
	// checksum of the frame would only repeat it: it is left out there,
	// which spares both hosts a CRC32C pass over every write.
	var psum uint32
	if !s.sealed {
		psum = payloadSum(c.frame[HeaderSize:c.nframe], data)
	}

	// Sequence numbers are assigned and frames queued under one lock, so
	// they leave in sequence order.
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		<-s.window
		callPool.Put(c)
		return nil, s.err
	}
	c.seq = s.nextSeq
	s.nextSeq++
	c.sentAt = time.Now()
	s.pending[c.seq] = c
	putHeader(c.frame[:], Header{Type: t, Length: uint32(plen + len(data)), Seq: c.seq, Epoch: s.cfg.Epoch})
	if !s.sealed {
		sealHeader(c.frame[:HeaderSize], psum)
	}
	s.sendq <- c // never blocks: the window bounds the queue
	return c, nil
}

// Close ends the session; calls still pending fail with ErrClosed.
func (s *Session) Close() error {
	s.fail(ErrClosed)
	<-s.finished
	return nil
}

// fail breaks the session once with err.
func (s *Session) fail(err error) {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return
	}
	s.err = err
	close(s.done)
	s.mu.Unlock()
	s.raw.Close() // see ServerSession.fail
}

// failPending runs after every worker exited, so no goroutine still reads a
// call's data when its caller is told it failed.
func (s *Session) failPending() {
	s.mu.Lock()
	err := s.err
	calls := s.pending
	s.pending = map[uint64]*Call{}
	s.mu.Unlock()
	for _, c := range calls {
		c.result <- fmt.Errorf("%w: %w", ErrDisconnected, err)
	}
	close(s.finished)
}

func (s *Session) writeLoop() {
	defer s.workers.Done()
	// On a TLS link a batch goes through one buffer, so that frame
	// headers and data fill whole records, and the link is corked while
	// TLS writes them, so that they leave in a few sends.
	var bw *bufio.Writer
	var lc *linkConn
	if tc, ok := s.conn.(*tls.Conn); ok {
		bw = bufio.NewWriterSize(s.conn, tlsWriteBuffer)
		lc, _ = tc.NetConn().(*linkConn)
	}
	bufs := make(net.Buffers, 0, 2*s.cfg.Window)
	ping := AppendFrame(nil, Header{Type: TypePing, Epoch: s.cfg.Epoch}, nil)
	idle := time.NewTicker(s.cfg.Timeout / 3)
	defer idle.Stop()
	for {
		bufs = bufs[:0]
		select {
		case c := <-s.sendq:
			bufs = appendCall(bufs, c)
		drain:
			for len(bufs) < cap(bufs) {
				select {
				case c := <-s.sendq:
					bufs = appendCall(bufs, c)
				default:
					break drain
				}
			}
		case <-idle.C:
			bufs = append(bufs, ping)
		case <-s.done:
			return
		}
		if err := s.send(bw, lc, bufs); err != nil {
			s.fail(fmt.Errorf("send to peer: %w", linkError(err)))
			return
		}
	}
}

// tlsWriteBuffer is the batch buffer of a TLS link: 16 full TLS records.
const tlsWriteBuffer = 256 << 10

// send writes one batch: with one writev on a plaintext link, through bw
// and corked lc on a TLS link.
func (s *Session) send(bw *bufio.Writer, lc *linkConn, bufs net.Buffers) error {
	if bw == nil {
		// WriteTo consumes the slice it is given: hand it a copy so that
		// bufs keeps its array for the next batch.
		out := bufs
		_, err := out.WriteTo(s.conn)
		return err
	}
	if lc != nil {
		lc.cork()
	}
	for _, b := range bufs {
		if _, err := bw.Write(b); err != nil {
			return err
		}
	}
	err := bw.Flush()
	if lc != nil {
		if uerr := lc.uncork(); err == nil {
			err = uerr
		}
	}
	return err
}

func appendCall(bufs net.Buffers, c *Call) net.Buffers {
	bufs = append(bufs, c.frame[:c.nframe])
	if len(c.data) > 0 {
		bufs = append(bufs, c.data)
	}
	return bufs
}

func (s *Session) readLoop() {
	defer s.workers.Done()
	buf := make([]byte, 4096)
	for {
		h, p, err := s.fr.ReadFrame(buf)
		if err != nil {
			s.fail(fmt.Errorf("read from peer: %w", linkError(err)))
			return
		}
		s.lastRecv.Store(time.Now().UnixNano())
		switch h.Type {
		case TypeAck:
			if err := s.complete(h.Seq, p); err != nil {
				s.fail(err)
				return
			}
		case TypePong:
		case TypeError:
			s.fail(fmt.Errorf("%w: %s", ErrPeerRefused, p))
			return
		default:
			s.fail(fmt.Errorf("%w: %s from secondary", ErrUnexpected, h.Type))
			return
		}
	}
}

func (s *Session) complete(seq uint64, payload []byte) error {
	status, body, err := parseAck(payload)
	if err != nil {
		return err
	}
	s.mu.Lock()
	c, ok := s.pending[seq]
	delete(s.pending, seq)
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: ack for seq %d that is not in flight", ErrUnexpected, seq)
	}
	<-s.window
	switch status {
	case AckOK:
	case AckTooLarge:
		c.result <- fmt.Errorf("%w: seq %d: %s", ErrReplyTooLarge, seq, body)
		return nil
	default:
		c.result <- fmt.Errorf("%w: seq %d: %s", ErrRemoteIO, seq, body)
		return nil
	}
	if len(body) > 0 {
		c.reply = bytes.Clone(body) // payload aliases the read buffer
	}
	switch {
	case c.kind == TypeFlush || c.kind == TypeJournal && c.jkind == KindFlush:
		s.flushes.Add(1)
	case c.kind == TypeWrite || c.kind == TypeTrim || c.kind == TypeJournal:
		s.writes.Add(1)
		s.bytes.Add(uint64(len(c.data)))
		if s.cfg.AckLatency != nil {
			s.cfg.AckLatency(time.Since(c.sentAt))
		}
	}
	c.result <- nil
	return nil
}

// watchdog breaks the session when an ack is overdue or the peer is silent,
// so a dead peer never hangs a writer for longer than the timeout.
func (s *Session) watchdog() {
	defer s.workers.Done()
	watch(s.cfg.Timeout, s.done, &s.lastRecv, s.oldestPending, s.fail)
}

// oldestPending returns when the request that has waited longest for its
// ack was sent, if one waits.
func (s *Session) oldestPending() (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var oldest time.Time
	for _, c := range s.pending {
		if oldest.IsZero() || c.sentAt.Before(oldest) {
			oldest = c.sentAt
		}
	}
	return oldest, !oldest.IsZero()
}
