package retrier

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/go-ldap/ldap/v3"
	"github.com/ldmirror/ldmirror/ldapagent/retrier/wire"
)

// Limits of a server connection.
const (
	// respBuffer is how many responses of one operation wait for the
	// caller. When they are not taken, the connection stops reading from
	// the server, and TCP slows the server down: a slow consumer (a proxy
	// client that reads slowly) costs at most this many messages of
	// memory, not the whole result (docs/retrier.md, bounds).
	respBuffer = 16
	// maxResponse is the largest response accepted from a server.
	maxResponse = 256 << 20
	// abandonTimeout bounds the write of an Abandon request.
	abandonTimeout = 5 * time.Second
	maxMessageID   = 1<<31 - 1
)

// errConnClosed ends a connection the session closed.
var errConnClosed = errors.New("connection closed")

// conn is one connection to an LDAP server. Requests are written whole
// under wmu; one reader goroutine routes every response to its operation
// by message ID. go-ldap's Conn is not used: it cannot bound connecting
// and binding by a context (issue 18, defect 1), it hides the type of a
// StartTLS certificate error (defect 3), it never abandons a cancelled
// search on the server, it drops a response its reader cannot hand over
// within the request timeout, and its three goroutine hops per response
// were most of the proxy's cost per operation (docs/benchmarks.md).
type conn struct {
	nc  net.Conn
	url string

	wmu  sync.Mutex // serialises writes; guards wbuf
	wbuf []byte

	mu     sync.Mutex
	lastID int64
	ops    map[int64]*exchange
	err    error         // why the connection is unusable; set once
	dead   chan struct{} // closed when err is set
	ended  chan struct{} // closed when the reader has returned
}

// exchange is one operation in flight on a conn.
type exchange struct {
	id    int64
	resp  chan []byte   // responses, whole LDAPMessages
	done  chan struct{} // closed by finish: no response is wanted any more
	timer *time.Timer   // idle timeout of recv, created on first use
}

// newConn starts the reader of a connection whose first lastID message
// IDs are used (by StartTLS).
func newConn(nc net.Conn, url string, lastID int64) *conn {
	c := &conn{nc: nc, url: url, lastID: lastID, ops: map[int64]*exchange{},
		dead: make(chan struct{}), ended: make(chan struct{})}
	go c.readLoop()
	return c
}

func (c *conn) readLoop() {
	defer close(c.ended)
	r := bufio.NewReader(c.nc)
	for {
		msg, err := wire.Read(r, maxResponse)
		if err != nil {
			c.fail(err)
			return
		}
		m, err := wire.Split(msg)
		if err != nil {
			c.fail(err)
			return
		}
		if m.ID == 0 { // unsolicited: a Notice of Disconnection (RFC 4511 4.4.1)
			c.fail(unsolicited(m))
			return
		}
		c.mu.Lock()
		x := c.ops[m.ID]
		c.mu.Unlock()
		if x == nil {
			continue // abandoned or finished
		}
		select {
		case x.resp <- msg:
		case <-x.done:
		case <-c.dead:
			return
		}
	}
}

func unsolicited(m wire.Message) error {
	code, _, diag, err := wire.Result(m.Op)
	if err != nil {
		return fmt.Errorf("unsolicited notification: %w", err)
	}
	return fmt.Errorf("notice of disconnection: result %d: %s", code, diag)
}

// fail makes the connection unusable with err and closes it.
func (c *conn) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = err
		close(c.dead)
	}
	c.mu.Unlock()
	_ = c.nc.Close()
}

// close closes the connection and waits for its reader.
func (c *conn) close() {
	c.fail(errConnClosed)
	<-c.ended
}

// alive reports whether the connection can take requests.
func (c *conn) alive() bool {
	select {
	case <-c.dead:
		return false
	default:
		return true
	}
}

// netError is the error of an operation on a connection that failed
// with err: go-ldap's network error (200), which the session retries on
// a new connection.
func (c *conn) netError(err error) error {
	return ldap.NewError(ldap.ErrorNetwork, fmt.Errorf("%s: %w", c.url, err))
}

// send writes an operation (its protocolOp and controls elements) with a
// new message ID; the write is bounded by ctx.
func (c *conn) send(ctx context.Context, op, controls []byte) (*exchange, error) {
	x := &exchange{resp: make(chan []byte, respBuffer), done: make(chan struct{})}
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, c.netError(err)
	}
	x.id = c.nextID()
	c.ops[x.id] = x
	c.mu.Unlock()
	if err := c.write(ctx, x.id, op, controls); err != nil {
		c.finish(x, false)
		return nil, err
	}
	return x, nil
}

// nextID returns a message ID not in use; c.mu is held.
func (c *conn) nextID() int64 {
	for {
		c.lastID = c.lastID%maxMessageID + 1
		if c.ops[c.lastID] == nil {
			return c.lastID
		}
	}
}

// write writes one message. The buffer is zeroed after the write: it may
// have held a bind password.
func (c *conn) write(ctx context.Context, id int64, op, controls []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	b := wire.Append(c.wbuf[:0], id, op, controls)
	dl, _ := ctx.Deadline()
	_ = c.nc.SetWriteDeadline(dl)
	_, err := c.nc.Write(b)
	clear(b)
	if cap(b) <= 64<<10 {
		c.wbuf = b
	}
	if err != nil {
		c.fail(err) // a partial write leaves the stream unusable
		return c.netError(err)
	}
	return nil
}

// recv returns the next response of x. It waits at most idle for it: a
// server that does not answer an operation for that long is taken as
// sick, whatever the call's deadline.
func (c *conn) recv(ctx context.Context, x *exchange, idle time.Duration) ([]byte, error) {
	select {
	case m := <-x.resp:
		return m, nil
	default:
	}
	if x.timer == nil {
		x.timer = time.NewTimer(idle)
	} else {
		x.timer.Reset(idle)
	}
	select {
	case m := <-x.resp:
		return m, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%s: %w", c.url, ctx.Err())
	case <-x.timer.C:
		return nil, c.netError(fmt.Errorf("no response in %v", idle))
	case <-c.dead:
		select {
		case m := <-x.resp: // delivered before the connection ended
			return m, nil
		default:
		}
		c.mu.Lock()
		err := c.err
		c.mu.Unlock()
		return nil, c.netError(err)
	}
}

// pending reports whether another response of x is waiting.
func (x *exchange) pending() bool { return len(x.resp) > 0 }

// finish ends x. With abandon (the final response did not arrive) the
// server is told to stop working on it (RFC 4511 4.11); responses that
// still arrive are dropped.
func (c *conn) finish(x *exchange, abandon bool) {
	c.mu.Lock()
	delete(c.ops, x.id)
	alive := c.err == nil
	var id int64
	if abandon && alive {
		id = c.nextID()
	}
	c.mu.Unlock()
	close(x.done)
	if x.timer != nil {
		x.timer.Stop()
	}
	if abandon && alive {
		ctx, cancel := context.WithTimeout(context.Background(), abandonTimeout)
		defer cancel()
		_ = c.write(ctx, id, abandonOp(x.id), nil)
	}
}
