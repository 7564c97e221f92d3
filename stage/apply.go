package stage

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ldmirror/ldmirror/internal/failpoint"
	"golang.org/x/sys/unix"
)

// Commit ends the staging of a resync that completed: it makes the log
// durable and marks it committed in one header write (from then on, after
// a crash too, its blocks are the volume's data), and returns once that
// is done, so that the source may count the resync as complete. The copy
// into the volume then runs in the background; WaitApplied waits for it.
// A commit already done or running is not an error. It fails with
// ErrNotStaging when nothing is staged; if the commit fails the log stays
// staged, and the source commits again.
func (a *Area) Commit() error {
	a.mu.Lock()
	switch a.state {
	case Idle:
		a.mu.Unlock()
		return ErrNotStaging
	case Committing, Applying:
		a.mu.Unlock()
		return nil
	}
	a.state, a.err = Committing, nil
	a.mu.Unlock()
	ok := a.commit()
	a.mu.Lock()
	defer a.mu.Unlock()
	if !ok {
		return a.err
	}
	failpoint.Crash("stage-committed-before-apply")
	a.start(a.apply)
	return nil
}

// startApply applies a log found committed at Open. a.mu need not be
// held: nothing else runs yet.
func (a *Area) startApply() {
	a.beginApply()
	a.start(a.apply)
}

// start runs fn in the background until it returns or Close stops it.
// a.mu is held.
func (a *Area) start(fn func(context.Context)) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	a.cancel, a.done = cancel, done
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		defer close(done)
		fn(ctx)
	}()
}

// commit makes the log durable and writes the committed header; it
// reports whether it did. On failure the log stays staged: the source
// commits again.
func (a *Area) commit() bool {
	// Most of the log, without holding up writes meanwhile.
	a.mu.Lock()
	f := a.f
	a.fileMu.RLock()
	a.mu.Unlock()
	err := unix.Fdatasync(int(f.Fd()))
	a.fileMu.RUnlock()
	failpoint.Crash("stage-commit-before-header")
	a.mu.Lock()
	defer a.mu.Unlock()
	if err == nil {
		h := a.hdr
		h.State, h.Seq, h.Committed = diskCommitted, h.Seq+1, time.Now().UTC()
		// writeHeader flushes the records staged since, then the header.
		if err = writeHeader(a.f, h); err == nil {
			a.hdr = h
		}
	}
	if err != nil {
		a.state, a.err = Staging, fmt.Errorf("stage: commit: %w", err)
		a.log.Error("the staged resync could not be committed; it stays staged", "err", err)
		return false
	}
	a.beginApply()
	a.log.Info("resync committed: applying the staged blocks to the volume", "blocks", a.total)
	return true
}

// beginApply enters Applying. a.mu is held (or nothing else runs).
func (a *Area) beginApply() {
	a.state, a.applied, a.total = Applying, roaring.New(), uint64(len(a.index))
}

// maxRun bounds the bytes one step of the apply copies while it holds up
// the writes.
const maxRun = 1 << 20

// apply copies the committed log into the volume, run by run of blocks,
// flushes the volume and removes the log. It is idempotent: run again from
// the start after a crash, it copies the same (or newer) data, as every
// write since the commit went to the log too for the blocks it holds.
func (a *Area) apply(ctx context.Context) {
	a.mu.Lock()
	order := make([]uint32, 0, len(a.index))
	for k := range a.index {
		order = append(order, k)
	}
	a.mu.Unlock()
	slices.Sort(order)
	bs := int64(a.geom.BlockSize)
	buf := make([]byte, maxRun)
	start := time.Now()
	for i := 0; i < len(order); {
		if ctx.Err() != nil {
			return // closing: the next Open applies again
		}
		a.mu.Lock()
		first := order[i]
		s0 := a.index[first]
		n := 1
		for i+n < len(order) && int64(n+1)*bs <= maxRun && order[i+n] == first+uint32(n) {
			s := a.index[order[i+n]]
			if s0 == zeroBlock && s != zeroBlock || s0 != zeroBlock && s != s0+int64(n)*bs {
				break
			}
			n++
		}
		var err error
		if s0 == zeroBlock {
			err = a.base.Trim(int64(first)*bs, int64(n)*bs)
		} else if _, err = a.f.ReadAt(buf[:int64(n)*bs], s0); err == nil {
			_, err = a.base.WriteAt(buf[:int64(n)*bs], int64(first)*bs)
		}
		if err == nil {
			a.applied.AddRange(uint64(first), uint64(first)+uint64(n))
		} else {
			a.err = fmt.Errorf("stage: apply block %d: %w", first, err)
			a.log.Error("applying the committed resync failed; it is applied again at the next start", "err", a.err)
		}
		a.mu.Unlock()
		if err != nil {
			return
		}
		failpoint.Crash("stage-mid-apply")
		i += n
	}
	a.mu.Lock()
	base := a.base
	a.mu.Unlock()
	if err := base.Flush(); err != nil {
		a.mu.Lock()
		a.err = fmt.Errorf("stage: flush the applied volume: %w", err)
		a.mu.Unlock()
		a.log.Error("flushing the applied resync failed; it is applied again at the next start", "err", err)
		return
	}
	failpoint.Crash("stage-applied-before-remove")
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.removeLog(); err != nil {
		a.err = err
		a.log.Error("the applied resync's log could not be removed; it is applied again at the next start", "err", err)
		return
	}
	a.log.Info("resync applied: the volume holds the source's data", "blocks", len(order), "took", time.Since(start).Round(time.Millisecond))
}

// WaitApplied waits until a committed log was applied and removed. It
// returns at once when nothing is staged, and ErrNotStaging while a
// resync is staged and not committed.
func (a *Area) WaitApplied(ctx context.Context) error {
	a.mu.Lock()
	state, done := a.state, a.done
	a.mu.Unlock()
	switch {
	case state == Idle:
		return nil
	case state == Staging:
		return ErrNotStaging
	}
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case a.state == Idle:
		return nil
	case a.err != nil:
		return a.err
	}
	return errors.New("stage: the apply stopped")
}
