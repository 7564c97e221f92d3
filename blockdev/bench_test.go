package blockdev

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ldmirror/ldmirror/bitmap"
	"github.com/ldmirror/ldmirror/transport"
)

// benchmarkMirrorWrite measures sync-mirrored writes of size bytes from
// depth concurrent writers to a secondary on 127.0.0.1, without FUSE.
func benchmarkMirrorWrite(b *testing.B, size, depth int) {
	p := newPair(&testing.T{})
	defer p.mirror.Close()
	b.SetBytes(int64(size))
	b.ReportAllocs()
	var next atomic.Int64
	slots := volSize / int64(size)
	b.SetParallelism(depth)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, size)
		for pb.Next() {
			off := (next.Add(1) % slots) * int64(size)
			if _, err := p.mirror.WriteAt(buf, off); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkMirrorWrite4KQD16(b *testing.B) { benchmarkMirrorWrite(b, 4096, 8) }
func BenchmarkMirrorWrite1MQD4(b *testing.B)  { benchmarkMirrorWrite(b, 1<<20, 2) }

// BenchmarkMirrorWrite4KQD16Process is BenchmarkMirrorWrite4KQD16 with the
// secondary in a child process, as in production.
func BenchmarkMirrorWrite4KQD16Process(b *testing.B) {
	t := &testing.T{}
	secPath := newFile(t, "b.img")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "LDMIRROR_TEST_SECONDARY="+secPath)
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer cmd.Process.Kill()
	addr, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		b.Fatal(err)
	}
	_, pri := testConfigs()
	sess, err := transport.Dial(context.Background(), strings.TrimSpace(addr), pri)
	if err != nil {
		b.Fatal(err)
	}
	defer sess.Close()
	dirty, _ := bitmap.New(volSize, 4096)
	m := NewMirror(openFile(t, newFile(t, "a.img")), dirty, nil, nil)
	defer m.Close()
	m.SetPeer(sess)
	var next atomic.Int64
	b.SetBytes(4096)
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, 4096)
		for pb.Next() {
			if _, err := m.WriteAt(buf, (next.Add(1)%(volSize/4096))*4096); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
