package transport

import (
	"context"
	"fmt"
	"log/slog"
	"testing"

	"github.com/ldmirror/ldmirror/internal/pkitest"
	"github.com/ldmirror/ldmirror/pki"
)

// discard acknowledges every request without applying it: the link's own
// cost.
type discard struct{}

func (discard) Handle(r *Request) { r.Done(nil) }

// BenchmarkLink pipelines writes through a session on 127.0.0.1, with the
// window full, on a TLS link and on a plaintext one.
func BenchmarkLink(b *testing.B) {
	ca := pkitest.New(b)
	srcA, srcB := ca.Source("a", pki.RoleData), ca.Source("b", pki.RoleData)
	for _, link := range []string{"plaintext", "tls"} {
		for _, size := range []int{4 << 10, 1 << 20} {
			b.Run(fmt.Sprintf("%s/%dKiB", link, size>>10), func(b *testing.B) {
				sc, pc := testConfig("b"), testConfig("a")
				sc.Size, pc.Size = 1<<30, 1<<30
				if link == "tls" {
					sc, pc = tlsConfig("b", srcB), tlsConfig("a", srcA)
					sc.Size, pc.Size = 1<<30, 1<<30
				}
				sc.Logger = slog.New(slog.DiscardHandler)
				ln, err := Listen("127.0.0.1:0", sc)
				if err != nil {
					b.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan struct{})
				go func() { defer close(done); _ = ln.Serve(ctx, discard{}) }()
				defer func() { cancel(); <-done }()
				s, err := Dial(context.Background(), ln.Addr().String(), pc)
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				data := make([]byte, size)
				calls := make(chan *Call, 64)
				waited := make(chan error, 1)
				go func() {
					var first error
					for c := range calls {
						if err := c.Wait(); err != nil && first == nil {
							first = err
						}
					}
					waited <- first
				}()
				b.SetBytes(int64(size))
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					c, err := s.SubmitWrite(int64(i%1024)*int64(size)%(1<<30-int64(size)), data)
					if err != nil {
						b.Fatal(err)
					}
					calls <- c
				}
				close(calls)
				if err := <-waited; err != nil {
					b.Fatal(err)
				}
			})
		}
	}
}
