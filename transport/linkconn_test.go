package transport

import (
	"bytes"
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
