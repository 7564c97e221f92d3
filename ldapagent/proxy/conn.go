package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ldmirror/ldmirror/ldapagent/retrier"
	"github.com/ldmirror/ldmirror/ldapagent/retrier/wire"
)

// errLifetime ends a connection whose session lifetime has passed.
var errLifetime = errors.New("session lifetime reached")

// clientConn is one client connection and its backend Session.
type clientConn struct {
	srv   *Server
	id    uint64
	log   *slog.Logger
	local bool // a unix socket: as confidential as TLS, for binds

	nc net.Conn
	r  *bufio.Reader

	wmu  sync.Mutex // serialises writes; guards w and hdr
	w    *bufio.Writer
	hdr  []byte
	werr error // the first write error; the connection is then dropped

	mu       sync.Mutex
	sess     *retrier.Session
	pending  map[int64]context.CancelFunc // operations in flight, for Abandon
	inflight int                          // operations in flight
	bound    bool                         // bound with a DN and password
	expires  time.Time                    // end of the session lifetime; zero: none
	closed   bool

	ops sync.WaitGroup // operation goroutines
}

func newClientConn(s *Server, nc net.Conn, id uint64) *clientConn {
	return &clientConn{
		srv:     s,
		id:      id,
		log:     s.log.With("conn", id, "client", nc.RemoteAddr().String()),
		local:   nc.LocalAddr().Network() == "unix",
		nc:      nc,
		r:       bufio.NewReader(nc),
		w:       bufio.NewWriter(nc),
		pending: map[int64]context.CancelFunc{},
	}
}

// abort closes the network connection and cancels the operations in
// flight, which abandons them on the servers; serve then returns.
func (c *clientConn) abort() {
	c.mu.Lock()
	c.closed = true
	nc := c.nc
	for _, cancel := range c.pending {
		cancel()
	}
	c.mu.Unlock()
	_ = nc.Close()
}

// serve reads requests until the client unbinds, disconnects or sends bad
// input, then waits for its operations and closes the Session, which
// zeroes the password it kept.
//
// It returns false if it handed the reading over to another goroutine
// (runInline), which then ends the connection.
func (c *clientConn) serve() bool {
	reason := c.readLoop()
	if errors.Is(reason, errHandedOff) {
		return false
	}
	// Whatever ended the connection (unbind, close, bad input), its
	// operations in flight can no longer be answered: abandon them
	// (RFC 4511 4.3).
	c.abort()
	c.ops.Wait()
	c.mu.Lock()
	sess := c.sess
	c.mu.Unlock()
	if sess != nil {
		_ = sess.Close()
	}
	_ = c.nc.Close()
	if reason != nil && !errors.Is(reason, errLifetime) {
		c.log.Warn("client connection closed", "reason", reason)
	} else {
		c.log.Debug("client connection closed", "reason", reason)
	}
	return true
}

// readLoop returns nil for an orderly end and the reason otherwise.
func (c *clientConn) readLoop() (reason error) {
	defer func() {
		if r := recover(); r != nil {
			reason = fmt.Errorf("panic: %v", r)
		}
	}()
	for {
		msg, err := c.read()
		if err != nil {
			return c.readFailed(err)
		}
		req, err := decodeRequest(msg)
		if err != nil {
			c.disconnect(codeProtocolError, err.Error())
			return err
		}
		if done, err := c.dispatch(req, msg); done {
			return err
		}
	}
}

// read reads the next request under the message size limit of the
// connection's state. A connection is idle when it has no operation in
// flight and sends nothing for IdleTimeout; once a message has started,
// all of it must arrive within IdleTimeout. The session lifetime ends the
// wait too.
func (c *clientConn) read() ([]byte, error) {
	for {
		c.mu.Lock()
		limit := c.srv.cfg.MaxUnboundMessageSize
		if c.bound {
			limit = c.srv.cfg.MaxMessageSize
		}
		deadline, busy := c.expires, c.inflight > 0
		c.mu.Unlock()
		if idle := c.srv.cfg.IdleTimeout; idle > 0 {
			if t := time.Now().Add(idle); deadline.IsZero() || t.Before(deadline) {
				deadline = t
			}
		}
		_ = c.nc.SetReadDeadline(deadline)
		_, err := c.r.Peek(1)
		if err == nil {
			return wire.Read(c.r, limit)
		}
		if !errors.Is(err, os.ErrDeadlineExceeded) || !busy || c.expired() {
			return nil, err
		}
		// Operations in flight: the client waits for them, it is not idle.
	}
}

func (c *clientConn) expired() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.expires.IsZero() && !time.Now().Before(c.expires)
}

// readFailed says why the connection ends after a failed read.
func (c *clientConn) readFailed(err error) error {
	c.mu.Lock()
	closed, expires, werr := c.closed, c.expires, c.werr
	c.mu.Unlock()
	switch {
	case werr != nil:
		return fmt.Errorf("client not reading: %w", werr)
	case closed, errors.Is(err, io.EOF):
		return nil
	case !expires.IsZero() && !time.Now().Before(expires) && errors.Is(err, os.ErrDeadlineExceeded):
		c.ops.Wait()
		c.disconnect(codeUnavailable, fmt.Sprintf("session lifetime of %v reached; connect and bind again", c.srv.cfg.SessionLifetime))
		return errLifetime
	case errors.Is(err, wire.ErrOversized), errors.Is(err, wire.ErrMalformed):
		c.disconnect(codeProtocolError, err.Error())
		return err
	}
	return fmt.Errorf("read: %w", err)
}

// dispatch handles one request; done ends the connection with reason.
func (c *clientConn) dispatch(req *request, msg []byte) (done bool, reason error) {
	switch {
	case req.tag == tagUnbind:
		return true, nil
	case req.tag == tagAbandon:
		c.mu.Lock()
		if cancel := c.pending[req.abandon]; cancel != nil {
			cancel()
		}
		c.mu.Unlock()
	case req.tag == tagExtended && req.extName == oidStartTLS:
		if err := c.startTLS(req); err != nil {
			return true, err
		}
	case req.tag == tagBind:
		// Binds are serialised: RFC 4511 4.2.1 forbids other
		// operations while a bind is outstanding.
		c.ops.Wait()
		c.bind(req)
		clear(msg) // the password
	default:
		c.mu.Lock()
		busy := c.inflight >= c.srv.cfg.MaxOperations
		if !busy {
			c.inflight++
		}
		c.mu.Unlock()
		if busy {
			c.reply(req, result{code: codeBusy, message: fmt.Sprintf("too many operations in flight on this connection (limit %d)", c.srv.cfg.MaxOperations)}, nil)
			return false, nil
		}
		c.ops.Add(1)
		if c.runInline(req) {
			return true, errHandedOff
		}
	}
	return false, nil
}

// errHandedOff ends a read loop whose reading another goroutine took over.
var errHandedOff = errors.New("reading handed over")

// inlineFor is how long an operation runs on the goroutine that read it
// before another goroutine takes over reading the client's next requests.
const inlineFor = 2 * time.Millisecond

// runInline runs req. Most operations take a fraction of a millisecond,
// and running one on the goroutine that read it saves starting a goroutine
// and handing the operation over to it: with two shared cores, those
// hand-overs (a thread woken, a context switch) cost the proxy more CPU than
// relaying the bytes (docs/benchmarks.md). An operation that is still
// running after inlineFor, or that arrives while another is in flight,
// does not hold up the client's next requests (pipelined, or an Abandon):
// a new goroutine reads them. runInline reports whether it handed the
// reading over; the calling read loop must then stop.
func (c *clientConn) runInline(req *request) (handedOff bool) {
	c.mu.Lock()
	alone := c.inflight == 1
	c.mu.Unlock()
	if !alone {
		go func() {
			defer c.ops.Done()
			c.run(req)
		}()
		return false
	}
	var state atomic.Int32 // 0 running, 1 done, 2 handed off
	c.srv.wg.Add(1)        // the reader that may take over
	t := time.AfterFunc(inlineFor, func() {
		defer c.srv.wg.Done()
		if state.CompareAndSwap(0, 2) && c.serve() {
			c.srv.forget(c)
		}
	})
	c.run(req)
	c.ops.Done()
	if t.Stop() {
		c.srv.wg.Done()
	}
	return !state.CompareAndSwap(0, 1)
}

// disconnect sends a Notice of Disconnection (RFC 4511 4.4.1).
func (c *clientConn) disconnect(code uint16, why string) {
	_ = c.write(message(0, extendedOp(result{code: code, message: why}, oidNoticeOfDisconnection, nil, false), nil))
}

func (c *clientConn) startTLS(req *request) error {
	c.ops.Wait()
	if c.srv.cfg.TLS == nil {
		return c.write(message(req.id, extendedOp(result{code: codeProtocolError, message: "StartTLS not configured"}, "", nil, false), nil))
	}
	if _, ok := c.nc.(*tls.Conn); ok {
		return c.write(message(req.id, extendedOp(result{code: codeOperationsError, message: "TLS already started"}, "", nil, false), nil))
	}
	if err := c.write(message(req.id, extendedOp(result{}, oidStartTLS, nil, false), nil)); err != nil {
		return err
	}
	if c.r.Buffered() > 0 {
		return errors.New("starttls: data after the request")
	}
	tc := tls.Server(c.nc, c.srv.cfg.TLS)
	_ = tc.SetDeadline(time.Now().Add(30 * time.Second))
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("starttls: %w", err)
	}
	_ = tc.SetDeadline(time.Time{})
	c.wmu.Lock()
	c.mu.Lock()
	c.nc, c.r, c.w = tc, bufio.NewReader(tc), bufio.NewWriter(tc)
	c.mu.Unlock()
	c.wmu.Unlock()
	return nil
}

// secure reports whether a password sent on the connection is protected:
// TLS, or a unix socket.
func (c *clientConn) secure() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, tlsConn := c.nc.(*tls.Conn)
	return tlsConn || c.local
}

// write sends one complete message.
func (c *clientConn) write(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.deadline()
	if _, err := c.w.Write(b); err != nil {
		return c.writeFailed(err)
	}
	if err := c.w.Flush(); err != nil {
		return c.writeFailed(err)
	}
	return nil
}

// relay sends a server's response msg to the client under message ID id:
// the client's. The operation and controls are copied as they are; flush
// false leaves them buffered, for a response that follows at once.
func (c *clientConn) relay(id int64, msg []byte, flush bool) error {
	m, err := wire.Split(msg)
	if err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.deadline()
	c.hdr = wire.Header(c.hdr[:0], id, len(m.Op), len(m.Controls))
	for _, b := range [][]byte{c.hdr, m.Op, m.Controls} {
		if _, err := c.w.Write(b); err != nil {
			return c.writeFailed(err)
		}
	}
	if flush {
		if err := c.w.Flush(); err != nil {
			return c.writeFailed(err)
		}
	}
	return nil
}

// deadline sets the write deadline; c.wmu is held.
func (c *clientConn) deadline() {
	_ = c.nc.SetWriteDeadline(time.Now().Add(c.srv.cfg.WriteTimeout))
}

// writeFailed drops a client that cannot be written to (gone, or not
// reading within WriteTimeout): its operations are abandoned on the
// servers. c.wmu is held.
func (c *clientConn) writeFailed(err error) error {
	c.mu.Lock()
	first := c.werr == nil
	if first {
		c.werr = err
	}
	c.mu.Unlock()
	if first {
		c.abort()
	}
	return err
}

// session returns the connection's Session, opening it on first use.
func (c *clientConn) session() (*retrier.Session, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sess == nil {
		s, err := retrier.OpenLazy(c.srv.cfg.Backend)
		if err != nil {
			return nil, err
		}
		c.sess = s
	}
	return c.sess, nil
}
