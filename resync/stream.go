package resync

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ldmirror/ldmirror/bitmap"
	"github.com/ldmirror/ldmirror/internal/failpoint"
	"github.com/ldmirror/ldmirror/transport"
)

// Options are how a resync runs.
type Options struct {
	// Checksum compares each run of blocks by keyed digest first and sends
	// only the blocks that differ: worth it when most are likely equal
	// (after a crash, the activity log's extents).
	Checksum bool
	// Rate limits the resync's traffic in bytes per second (0: no limit).
	Rate int64
	// MinRate is what the resync slows to while the application writes
	// (0: it never yields), DRBD's c-min-rate.
	MinRate int64
	// Rates, if set, replaces Rate and MinRate: it is asked before each
	// run of blocks, so that new rates apply to a running resync.
	Rates func() (rate, minRate int64)
	Log   *slog.Logger
}

// persistEvery is how often a resync persists what it copied.
const persistEvery = time.Second

// depth is how many runs of blocks a resync keeps in flight, each with its
// own buffer and lock, so scattered blocks do not pay a round trip each.
const depth = 16

// Run copies every block src says is out of sync to the peer of s, while
// application writes go on: each run is locked against them while it is
// read, compared and sent, and cleared under that lock. The peer is
// marked inconsistent (src.MarkTarget) before the first block is sent. p
// counts the work.
func Run(ctx context.Context, src Source, s *transport.Session, opt Options, p *Progress) error {
	log := opt.Log
	if log == nil {
		log = slog.Default()
	}
	oos := src.OutOfSync()
	p.begin(oos.GetCardinality())
	bs := int64(src.BlockSize())
	maxRun := uint32(transport.MaxWrite / bs)
	bufs := make(chan []byte, depth)
	for range depth {
		bufs <- make([]byte, transport.MaxWrite)
	}
	var (
		wg      sync.WaitGroup
		errMu   sync.Mutex
		firstEr error
	)
	failed := func() error {
		errMu.Lock()
		defer errMu.Unlock()
		return firstEr
	}
	start := time.Now()
	lastPersist := start
	// The peer turns inconsistent with the first block sent, not before:
	// a checksum resync may find nothing to send.
	target := sync.OnceValue(func() error { return src.MarkTarget(ctx) })
	pace := &pacer{max: opt.Rate, min: opt.MinRate, rates: opt.Rates, appIO: src.AppWrites, now: time.Now, yielding: p.yielding.Store}
	defer p.yielding.Store(false)
	run := runCopy{src: src, s: s, checksum: opt.Checksum, target: target, p: p}
	it := oos.Iterator()
	for it.HasNext() && failed() == nil {
		if err := ctx.Err(); err != nil {
			wg.Wait()
			return err
		}
		first := it.Next()
		last := first
		for it.HasNext() && it.PeekNext() == last+1 && last-first+1 < maxRun {
			last = it.Next()
		}
		e := bitmap.Extent{First: first, Last: last}
		buf := <-bufs
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { bufs <- buf }()
			if err := run.copy(e, buf); err != nil {
				errMu.Lock()
				if firstEr == nil {
					firstEr = err
				}
				errMu.Unlock()
				return
			}
			p.add(e.Blocks())
		}()
		if time.Since(lastPersist) >= persistEvery {
			if err := src.Persist(ctx); err != nil {
				wg.Wait()
				return fmt.Errorf("resync: persist progress: %w", err)
			}
			lastPersist = time.Now()
		}
		if err := pace.wait(ctx, int64(e.Blocks())*bs); err != nil {
			wg.Wait()
			return err
		}
	}
	wg.Wait()
	if err := failed(); err != nil {
		return fmt.Errorf("resync: %w", err)
	}
	log.Info("resync finished", "blocks", oos.GetCardinality(), "elapsed", time.Since(start).Round(time.Millisecond))
	return nil
}

// runCopy copies one run of blocks at a time for Run.
type runCopy struct {
	src      Source
	s        *transport.Session
	checksum bool
	target   func() error
	p        *Progress
}

// copy sends the blocks of e that the peer lacks (all of them, or with
// checksum those whose digests differ) and clears them.
func (r runCopy) copy(e bitmap.Extent, buf []byte) error {
	unlock, err := r.src.Lock(e)
	if err != nil {
		return err
	}
	defer unlock()
	bs := r.src.BlockSize()
	off := int64(e.First) * int64(bs)
	n := min(int64(e.Blocks())*int64(bs), r.src.Size()-off)
	var sums *transport.Call
	var key *[transport.ChecksumKeySize]byte
	if r.checksum {
		key = transport.NewChecksumKey() // after the lock: see transport.BlockDigests
		if sums, err = r.s.SubmitChecksum(off, n, key); err != nil {
			r.src.PeerLost(r.s, err)
			return err
		}
	}
	if _, err := r.src.ReadAt(buf[:n], off); err != nil {
		if sums != nil {
			_ = sums.Wait()
		}
		return fmt.Errorf("read block %d: %w", e.First, err)
	}
	differ := []bitmap.Extent{e}
	if sums != nil {
		peer, err := sums.WaitReply()
		if err != nil {
			r.src.PeerLost(r.s, err)
			return err
		}
		differ = differingRuns(e, transport.BlockDigests(buf[:n], bs, key), peer)
		r.p.skipped.Add(e.Blocks() - blocksOf(differ))
	}
	if len(differ) > 0 {
		if err := r.target(); err != nil {
			return err
		}
	}
	if err := r.send(differ, e, buf, n); err != nil {
		r.src.PeerLost(r.s, err)
		return err
	}
	r.p.sent.Add(blocksOf(differ))
	done := roaring.New()
	done.AddRange(uint64(e.First), uint64(e.Last)+1)
	r.src.Copied(done)
	return nil
}

// send writes the runs of blocks differ (within e, whose n bytes are in
// buf) to the peer and waits for their acks.
func (r runCopy) send(differ []bitmap.Extent, e bitmap.Extent, buf []byte, n int64) error {
	bs := int64(r.src.BlockSize())
	off := int64(e.First) * bs
	if failpoint.Reached("resync-mid-extent") {
		// The peer acknowledges the first half of e; this host dies.
		if c, err := r.s.SubmitWrite(off, buf[:n/2/bs*bs]); err == nil {
			_ = c.Wait()
		}
		failpoint.Kill("resync-mid-extent")
	}
	calls := make([]*transport.Call, 0, len(differ))
	var err error
	for _, d := range differ {
		lo, hi := int64(d.First-e.First)*bs, min(int64(d.Last-e.First+1)*bs, n)
		c, serr := r.s.SubmitWrite(off+lo, buf[lo:hi])
		if serr != nil {
			err = serr
			break
		}
		calls = append(calls, c)
	}
	for _, c := range calls {
		if werr := c.Wait(); werr != nil && err == nil {
			err = werr
		}
	}
	return err
}

// differingRuns returns the runs of blocks of e whose local and peer
// digests differ (all of e if the peer's answer has the wrong length).
func differingRuns(e bitmap.Extent, local, peer []byte) []bitmap.Extent {
	if len(local) != len(peer) {
		return []bitmap.Extent{e}
	}
	var runs []bitmap.Extent
	for i := 0; i < len(local); i += transport.ChecksumDigestSize {
		if bytes.Equal(local[i:i+transport.ChecksumDigestSize], peer[i:i+transport.ChecksumDigestSize]) {
			continue
		}
		b := e.First + uint32(i/transport.ChecksumDigestSize)
		if k := len(runs); k > 0 && runs[k-1].Last+1 == b {
			runs[k-1].Last = b
		} else {
			runs = append(runs, bitmap.Extent{First: b, Last: b})
		}
	}
	return runs
}

func blocksOf(es []bitmap.Extent) uint64 {
	var n uint64
	for _, e := range es {
		n += e.Blocks()
	}
	return n
}
