package transport

import (
	"bytes"
	"io"
	"net"
	"testing"
)

// recordingConn records the sizes of the sends it is given.
type recordingConn struct {
	net.Conn
	sends []int
	data  bytes.Buffer
}

func (c *recordingConn) Write(p []byte) (int, error) {
	c.sends = append(c.sends, len(p))
	return c.data.Write(p)
}

// TestLinkConnCork: corked writes leave in order, in sends of at least
// corkLimit bytes but the last, and uncorked writes at once.
func TestLinkConnCork(t *testing.T) {
	rc := &recordingConn{}
	lc := newLinkConn(rc)
	var want bytes.Buffer
	write := func(n int, b byte) {
		p := bytes.Repeat([]byte{b}, n)
		want.Write(p)
		if _, err := lc.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	write(100, 1)
	lc.cork()
	for i := range 100 {
		write(16<<10+22, byte(i))
	}
	if err := lc.uncork(); err != nil {
		t.Fatal(err)
	}
	write(7, 2)
	if !bytes.Equal(rc.data.Bytes(), want.Bytes()) {
		t.Fatal("bytes reordered or lost")
	}
	if rc.sends[0] != 100 || rc.sends[len(rc.sends)-1] != 7 {
		t.Fatalf("uncorked writes were not sent at once: %v", rc.sends)
	}
	corked := rc.sends[1 : len(rc.sends)-1]
	for i, n := range corked[:len(corked)-1] {
		if n < corkLimit || n > corkLimit+16<<10+22 {
			t.Fatalf("send %d of a batch is %d bytes, want %d to %d", i, n, corkLimit, corkLimit+16<<10+22)
		}
	}
	if len(corked) != 4 {
		t.Fatalf("%d sends for a batch of %d bytes, want 4: %v", len(corked), 100*(16<<10+22), corked)
	}
}

// readerConn is a net.Conn that reads from r.
type readerConn struct {
	net.Conn
	r io.Reader
}

func (c readerConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// TestLinkConnRecords: reads stop at TLS record boundaries, and ready says
// whether a whole record is buffered.
func TestLinkConnRecords(t *testing.T) {
	var stream []byte
	for i := range 3 {
		stream = append(stream, 23, 3, 3, 0, byte(10+i))
		stream = append(stream, bytes.Repeat([]byte{byte(i)}, 10+i)...)
	}
	stream = append(stream, 23, 3, 3, 0, 100, 1, 2) // a record cut short
	lc := newLinkConn(readerConn{r: bytes.NewReader(stream)})
	buf := make([]byte, 1024)
	for i := range 3 {
		n, err := lc.Read(buf)
		if err != nil || n != 5+10+i {
			t.Fatalf("read %d: %d bytes, %v; want the record of %d", i, n, err, 5+10+i)
		}
		if want := i < 2; lc.ready() != want {
			t.Fatalf("after record %d: ready %t, want %t", i, !want, want)
		}
	}
	if n, err := lc.Read(buf); err != nil || n != 7 {
		t.Fatalf("the cut record: %d bytes, %v; want the 7 there are", n, err)
	}
	if n, err := lc.Read(buf); err != io.EOF || n != 0 {
		t.Fatalf("after the stream: %d, %v; want EOF", n, err)
	}
}
