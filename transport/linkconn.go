package transport

import (
	"bufio"
	"encoding/binary"
	"net"
	"sync"
)

// linkConn is the TCP connection under a TLS link. crypto/tls reads and
// writes one record (at most 16 KiB) per call: a 1 MiB write would cost the
// sender 64 sends and the receiver as many reads. linkConn reads through a
// large buffer, and while corked it collects the records TLS writes and
// sends them in sends of up to corkLimit bytes, so the session's writer
// sends a batch of frames in a few syscalls (see Session.writeLoop).
//
// Reads stop at record boundaries, so that TLS never holds a record it
// has not decrypted yet: whether the next record can be read without
// waiting is then known here (ready), which the secondary asks before it
// sends the acks of the frames read so far (ServerSession.readLoop).
type linkConn struct {
	net.Conn
	r    *bufio.Reader
	left int // bytes of the current record not yet read

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

// Read reads at most to the end of the current TLS record.
func (c *linkConn) Read(p []byte) (int, error) {
	if c.left == 0 {
		hdr, err := c.r.Peek(recordHeader)
		if err != nil {
			if len(hdr) > 0 && len(p) > 0 {
				// Hand TLS what there is: it reports the cut itself.
				return c.r.Read(p[:min(len(p), len(hdr))])
			}
			return 0, err
		}
		c.left = recordHeader + int(binary.BigEndian.Uint16(hdr[3:5]))
	}
	if len(p) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= n
	return n, err
}

// recordHeader is the size of a TLS record's header (RFC 8446 §5.1):
// type, legacy version, 16-bit length.
const recordHeader = 5

// ready reports whether a whole TLS record is buffered: the next read of
// the connection's TLS layer will not wait for the network.
func (c *linkConn) ready() bool {
	b := c.r.Buffered()
	if c.left > 0 {
		return b >= c.left
	}
	if b < recordHeader {
		return false
	}
	hdr, _ := c.r.Peek(recordHeader) // buffered: does not block
	return b >= recordHeader+int(binary.BigEndian.Uint16(hdr[3:5]))
}

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
