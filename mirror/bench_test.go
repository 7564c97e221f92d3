package mirror

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/ldmirror/ldmirror/internal/peertest"
	"github.com/ldmirror/ldmirror/journal"
	"github.com/ldmirror/ldmirror/replica"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ldmirror/ldmirror/bitmap"
	"github.com/ldmirror/ldmirror/transport"
)

// benchmarkMirrorWrite measures sync-mirrored writes of size bytes from
// depth concurrent writers to a secondary on 127.0.0.1, without FUSE.
func benchmarkMirrorWrite(b *testing.B, size, depth int) {
	p := newPair(b)
	defer p.mirror.Close()
	parallelWrites(b, p.mirror, size, depth)
}

// parallelWrites runs b.N writes of size bytes to m from depth writers
// per CPU, each to the next slot of the volume.
func parallelWrites(b *testing.B, m *Mirror, size, depth int) {
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
			if _, err := m.WriteAt(buf, off); err != nil {
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
	secPath := newFile(b, "b.img")
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
	_, pri := peertest.Configs(volSize)
	sess, err := transport.Dial(context.Background(), strings.TrimSpace(addr), pri)
	if err != nil {
		b.Fatal(err)
	}
	defer sess.Close()
	dirty, _ := bitmap.New(volSize, 4096)
	m := mustNew(b, openFile(b, newFile(b, "a.img")), Config{Dirty: dirty})
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

const resyncVolume = 1 << 30

// BenchmarkResync copies a random fraction of a 1 GiB volume's blocks to a
// secondary on 127.0.0.1; compare with BenchmarkFullCopyTCP, the whole
// volume over the same kind of link with no protocol at all.
func BenchmarkResync(b *testing.B) {
	for _, frac := range []float64{0.001, 0.01, 0.1, 1} {
		b.Run(fmt.Sprintf("dirty=%g%%", frac*100), func(b *testing.B) {
			p := newPairSized(b, resyncVolume)
			blocks := p.dirty.Blocks()
			rng := rand.New(rand.NewPCG(1, 2))
			oos := roaring.New()
			for oos.GetCardinality() < uint64(frac*float64(blocks)) {
				oos.Add(uint32(rng.Uint64N(blocks)))
			}
			b.SetBytes(int64(oos.GetCardinality()) * 4096)
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				p.dirty.MarkOutOfSync(oos)
				b.StartTimer()
				if err := p.mirror.Resync(context.Background(), false); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkFullCopyTCP sends a 1 GiB file over a loopback TCP connection into
// a file at the other end: the floor for a full resync.
func BenchmarkFullCopyTCP(b *testing.B) {
	src := openFileSized(b, newFileSized(b, "a.img", resyncVolume), resyncVolume)
	defer src.Close()
	dst, err := os.Create(filepath.Join(b.TempDir(), "b.img"))
	if err != nil {
		b.Fatal(err)
	}
	defer dst.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	b.SetBytes(resyncVolume)
	for range b.N {
		done := make(chan error, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				done <- err
				return
			}
			defer c.Close()
			_, err = io.Copy(io.NewOffsetWriter(dst, 0), c)
			done <- err
		}()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(c, io.NewSectionReader(src, 0, resyncVolume)); err != nil {
			b.Fatal(err)
		}
		c.Close()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
}

// benchmarkAsyncWrite is benchmarkMirrorWrite in async mode: a write
// returns after the local write and the journal append. Writers outrun the
// shipper here, so once the 64 MiB journal is full this measures the
// shipping rate (the writers are throttled), on a loopback link where the
// two ends share the CPUs.
func benchmarkAsyncWrite(b *testing.B, size, depth int) {
	dir := b.TempDir()
	pri, sec := newFileSized(b, "a.img", volSize), newFileSized(b, "b.img", volSize)
	secDev := openFileSized(b, sec, volSize)
	replica := replica.New(secDev, 4096, nil)
	secCfg, priCfg := peertest.Configs(volSize)
	ln, err := transport.Listen("127.0.0.1:0", secCfg)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { defer close(served); _ = ln.Serve(ctx, replica) }()
	j, err := journal.Create(filepath.Join(dir, "journal"), journal.Options{})
	if err != nil {
		b.Fatal(err)
	}
	dirty, _ := bitmap.New(volSize, 4096)
	m := mustNew(b, openFileSized(b, pri, volSize), Config{Dirty: dirty, Async: &AsyncConfig{Journal: j}})
	sess, err := transport.Dial(ctx, ln.Addr().String(), priCfg)
	if err != nil {
		b.Fatal(err)
	}
	m.SetPeer(sess)
	if err := m.CatchUp(ctx, false); err != nil {
		b.Fatal(err)
	}
	defer func() {
		m.Close()
		sess.Close()
		cancel()
		<-served
		replica.Wait()
		secDev.Close()
	}()
	parallelWrites(b, m, size, depth)
	b.StopTimer()
	if err := m.Drain(ctx); err != nil {
		b.Fatal(err)
	}
}

func BenchmarkMirrorWriteAsync4KQD16(b *testing.B) { benchmarkAsyncWrite(b, 4096, 8) }

func BenchmarkMirrorWriteAsync1MQD4(b *testing.B) { benchmarkAsyncWrite(b, 1<<20, 2) }
