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
	// respBuffer is how many responses of one operation, read by another
	// operation's call, wait for their caller. When they are not taken, the
	// connection is not read any further and TCP slows the server down: a
	// slow consumer (a proxy client that reads slowly) costs at most this
	// many messages of memory, not the whole result (docs/retrier.md,
	// bounds).
	respBuffer = 16
	// maxResponse is the largest response accepted from a server.
	maxResponse = 256 << 20
	// abandonTimeout bounds the write of an Abandon request.
	abandonTimeout = 5 * time.Second
	// staleAfter is how long a connection may have gone unread before a
	// request is sent on it: longer, and it is checked first for an end
	// (the server closed it, or sent a Notice of Disconnection) that nobody
	// read.
	staleAfter   = time.Second
	maxMessageID = 1<<31 - 1
)

// errConnClosed ends a connection the session closed.
var errConnClosed = errors.New("connection closed")

// conn is one connection to an LDAP server. Requests are written whole
// under wmu. There is no reader goroutine: a call waiting for a response
// reads the connection itself, and routes any response for another
// operation to that operation's buffer (read.go). With one operation at a
// time, the usual case for a proxy client, the response goes from the
// socket to its caller without waking another goroutine.
//
// go-ldap's Conn is not used: it cannot bound connecting and binding by a
// context (issue 18, defect 1), it hides the type of a StartTLS
// certificate error (defect 3), it never abandons a cancelled search on
// the server, it drops a response its reader cannot hand over within the
// request timeout, and its three goroutine hops per response were most of
// the proxy's cost per operation (docs/benchmarks.md).
type conn struct {
	nc  net.Conn
	url string
	br  *bufio.Reader // read by the exchange that holds reading

	wmu  sync.Mutex // serialises writes; guards wbuf
	wbuf []byte

	mu            sync.Mutex
	lastID        int64
	ops           map[int64]*exchange
	reading       bool          // an exchange reads the connection
	interruptible bool          // the reader waits for a first byte (read.go)
	lastRead      time.Time     // when reading last stopped
	waiters       int           // exchanges waiting for the reading
	turn          chan struct{} // closed when reading is free, if waiters > 0
	err           error         // why the connection is unusable; set once
	dead          chan struct{} // closed when err is set
}

// exchange is one operation in flight on a conn.
type exchange struct {
	id    int64
	resp  chan []byte   // responses routed by another exchange's read
	done  chan struct{} // closed by finish: no response is wanted any more
	more  bool          // another response was waiting when recv returned
	timer *time.Timer   // wait of a caller that does not read, created on first use
}

// newConn returns a connection whose first lastID message IDs are used
// (by StartTLS).
func newConn(nc net.Conn, url string, lastID int64) *conn {
	return &conn{nc: nc, url: url, br: bufio.NewReader(nc), lastID: lastID, ops: map[int64]*exchange{},
		lastRead: time.Now(), turn: make(chan struct{}), dead: make(chan struct{})}
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

// close closes the connection; a call reading it gets an error.
func (c *conn) close() { c.fail(errConnClosed) }

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
	if err := c.checkStale(); err != nil {
		return nil, err
	}
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
