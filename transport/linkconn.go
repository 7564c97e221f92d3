package transport

import (
	"bufio"
	"net"
	"sync"
)

// linkConn is the TCP connection under a TLS link. crypto/tls reads and
// writes one record (at most 16 KiB) per call: a 1 MiB write would cost the
// sender 64 sends and the receiver as many reads. linkConn reads through a
// large buffer, and while corked it collects the records TLS writes and
// sends them in sends of up to corkLimit bytes, so the session's writer
// sends a batch of frames in a few syscalls (see Session.writeLoop).
type linkConn struct {
	net.Conn
	r *bufio.Reader

	mu     sync.Mutex
	corked bool
	buf    []byte
}

// Buffer sizes of a linkConn.
const (
	linkReadBuffer = 256 << 10
	corkLimit      = 512 << 10
)

func newLinkConn(c net.Conn) *linkConn {
	return &linkConn{Conn: c, r: bufio.NewReaderSize(c, linkReadBuffer)}
}

func (c *linkConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// Write sends p, or while corked adds it to the batch, sending the batch
// once it reaches corkLimit.
func (c *linkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.corked {
		return c.Conn.Write(p)
	}
	c.buf = append(c.buf, p...)
	if len(c.buf) >= corkLimit {
		if err := c.sendLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// cork starts collecting writes; uncork sends what was collected.
func (c *linkConn) cork() {
	c.mu.Lock()
	c.corked = true
	c.mu.Unlock()
}

func (c *linkConn) uncork() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	return c.sendLocked()
}

func (c *linkConn) sendLocked() error {
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.buf)
	c.buf = c.buf[:0]
	if cap(c.buf) > 2*corkLimit {
		c.buf = nil // a huge batch once must not pin its memory
	}
	return err
}
