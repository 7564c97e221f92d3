package retrier

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/ldmirror/ldmirror/ldapagent/retrier/wire"
)

// Reading a conn. Whoever waits for a response reads: one exchange at a
// time holds the reading (c.reading), reads messages until one of its own
// arrives, and routes the others to their exchanges' buffers. Exchanges
// that wait meanwhile take the reading over when it is released (c.turn).
// A response for an exchange whose buffer is full blocks the reader:
// that is the back-pressure to the server.

// errInterrupted: the wait for a response ended because the caller's
// context did; the connection is sound.
var errInterrupted = errors.New("interrupted")

// recv returns the next response of x. It waits at most idle for it: a
// server that does not answer an operation for that long is taken as
// sick, whatever the call's deadline. x.more tells whether another
// response was already waiting.
func (c *conn) recv(ctx context.Context, x *exchange, idle time.Duration) ([]byte, error) {
	for {
		select {
		case m := <-x.resp:
			x.more = len(x.resp) > 0
			return m, nil
		default:
		}
		c.mu.Lock()
		if c.err != nil {
			err := c.err
			c.mu.Unlock()
			return c.drained(x, err)
		}
		if !c.reading {
			c.reading = true
			c.mu.Unlock()
			m, err := c.readFor(ctx, x, idle)
			c.release()
			return m, err
		}
		c.waiters++
		turn := c.turn
		c.mu.Unlock()
		m, err, again := c.wait(ctx, x, idle, turn)
		c.mu.Lock()
		c.waiters--
		c.mu.Unlock()
		if !again {
			return m, err
		}
	}
}

// drained returns a response routed to x before the connection ended with
// err, or err.
func (c *conn) drained(x *exchange, err error) ([]byte, error) {
	select {
	case m := <-x.resp:
		x.more = len(x.resp) > 0
		return m, nil
	default:
		return nil, c.netError(err)
	}
}

// wait waits while another exchange reads: for a response it routes to x,
// or for the reading to be free (again).
func (c *conn) wait(ctx context.Context, x *exchange, idle time.Duration, turn chan struct{}) (m []byte, err error, again bool) {
	if x.timer == nil {
		x.timer = time.NewTimer(idle)
	} else {
		x.timer.Reset(idle)
	}
	select {
	case m := <-x.resp:
		x.more = len(x.resp) > 0
		return m, nil, false
	case <-turn:
		return nil, nil, true
	case <-ctx.Done():
		return nil, fmt.Errorf("%s: %w", c.url, ctx.Err()), false
	case <-x.timer.C:
		return nil, c.netError(fmt.Errorf("no response in %v", idle)), false
	case <-c.dead:
		return nil, nil, true // drained by the next round
	}
}

// release gives the reading up and wakes the exchanges waiting for it.
func (c *conn) release() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reading = false
	c.lastRead = time.Now()
	if c.waiters > 0 {
		close(c.turn)
		c.turn = make(chan struct{})
	}
}

// readFor reads messages until one for x arrives, routing the others; x
// holds the reading.
func (c *conn) readFor(ctx context.Context, x *exchange, idle time.Duration) ([]byte, error) {
	for {
		msg, err := c.readMessage(ctx, idle)
		if errors.Is(err, errInterrupted) {
			return nil, fmt.Errorf("%s: %w", c.url, ctx.Err())
		}
		if err != nil {
			c.fail(err)
			return nil, c.netError(err)
		}
		m, err := wire.Split(msg)
		if err != nil {
			c.fail(err)
			return nil, c.netError(err)
		}
		if m.ID == 0 { // unsolicited: a Notice of Disconnection (RFC 4511 4.4.1)
			err := unsolicited(m)
			c.fail(err)
			return nil, c.netError(err)
		}
		if m.ID == x.id {
			x.more = c.br.Buffered() > 0
			return msg, nil
		}
		c.route(m.ID, msg)
	}
}

// route hands msg to the exchange it answers; a response to an exchange
// that has finished (abandoned) is dropped.
func (c *conn) route(id int64, msg []byte) {
	c.mu.Lock()
	o := c.ops[id]
	c.mu.Unlock()
	if o == nil {
		return
	}
	select {
	case o.resp <- msg:
	case <-o.done:
	case <-c.dead:
	}
}

// readMessage reads one message. Until its first byte arrives the wait
// ends with the idle timeout or with ctx (then errInterrupted, and the
// connection stays sound); once it has started, the rest must arrive
// within idle, uninterrupted, so that the stream stays whole.
func (c *conn) readMessage(ctx context.Context, idle time.Duration) ([]byte, error) {
	if c.br.Buffered() == 0 {
		c.mu.Lock()
		c.interruptible = true
		c.mu.Unlock()
		_ = c.nc.SetReadDeadline(time.Now().Add(idle))
		stop := context.AfterFunc(ctx, c.interrupt)
		_, err := c.br.Peek(1)
		stop()
		c.mu.Lock()
		c.interruptible = false
		c.mu.Unlock()
		switch {
		case err != nil && errors.Is(err, os.ErrDeadlineExceeded) && ctx.Err() != nil:
			return nil, errInterrupted
		case err != nil && errors.Is(err, os.ErrDeadlineExceeded):
			return nil, fmt.Errorf("no response in %v", idle)
		case err != nil:
			return nil, err
		}
	}
	_ = c.nc.SetReadDeadline(time.Now().Add(idle))
	return wire.Read(c.br, maxResponse)
}

// interrupt ends a reader's wait for a first byte: its context ended.
func (c *conn) interrupt() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.interruptible {
		_ = c.nc.SetReadDeadline(time.Unix(1, 0))
	}
}

// checkStale checks a connection nobody has read for staleAfter before a
// request goes out on it: an end of the connection or a Notice of
// Disconnection that arrived meanwhile is noticed now, instead of costing
// the request an attempt.
func (c *conn) checkStale() error {
	c.mu.Lock()
	if c.err != nil || c.reading || len(c.ops) > 0 || time.Since(c.lastRead) < staleAfter {
		c.mu.Unlock()
		return nil
	}
	c.reading = true
	c.mu.Unlock()
	defer c.release()
	if c.br.Buffered() == 0 && !readable(c.nc) {
		return nil // nothing arrived: sound
	}
	err := errors.New("unsolicited message from the server")
	_ = c.nc.SetReadDeadline(time.Now().Add(staleAfter))
	msg, rerr := wire.Read(c.br, maxResponse)
	switch {
	case rerr != nil:
		err = rerr // typically EOF: the server closed the connection
	default:
		if m, serr := wire.Split(msg); serr == nil && m.ID == 0 {
			err = unsolicited(m)
		}
	}
	c.fail(err)
	return c.netError(err)
}

// readable reports whether the socket under nc has bytes or an end of
// stream to read, without waiting and without consuming anything
// (recv with MSG_PEEK and MSG_DONTWAIT). A connection whose socket
// cannot be reached this way counts as readable: it is then read with a
// deadline.
func readable(nc net.Conn) bool {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return true
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	var b [1]byte
	var n int
	var rerr error
	if err := raw.Read(func(fd uintptr) bool {
		n, _, rerr = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true // never wait
	}); err != nil {
		return true
	}
	_ = n // 1: a byte; 0: the end of the stream
	return !errors.Is(rerr, syscall.EAGAIN)
}
