package transport

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// progressHandler records the last Progress it was told.
type progressHandler struct{ got chan Progress }

func (h progressHandler) Handle(r *Request) {
	if r.Kind == KindProgress {
		h.got <- r.Progress
	}
	r.Done(nil)
}

// TestProgressReachesTarget: a resync's progress travels to the target
// intact, and AckLatency times each acknowledged write.
func TestProgressReachesTarget(t *testing.T) {
	ln, err := Listen("127.0.0.1:0", testConfig("b"))
	if err != nil {
		t.Fatal(err)
	}
	h := progressHandler{got: make(chan Progress, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = ln.Serve(ctx, h) }()
	defer func() { cancel(); <-done }()

	var acks atomic.Int64
	cfg := testConfig("a")
	cfg.AckLatency = func(d time.Duration) {
		if d > 0 {
			acks.Add(1)
		}
	}
	sess, err := Dial(context.Background(), ln.Addr().String(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	want := Progress{DoneBlocks: 1234, TotalBlocks: 65536, RateBytes: 4 << 20, ETA: 61500 * time.Millisecond}
	c, err := sess.SubmitProgress(want)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Wait(); err != nil {
		t.Fatal(err)
	}
	if got := <-h.got; got != want {
		t.Fatalf("target got %+v, want %+v", got, want)
	}
	w, err := sess.SubmitWrite(0, make([]byte, 4096))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Wait(); err != nil {
		t.Fatal(err)
	}
	if n := acks.Load(); n != 1 {
		t.Fatalf("AckLatency called %d times for one write (and no progress), want 1", n)
	}
}
