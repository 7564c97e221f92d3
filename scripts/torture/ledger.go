package main

import (
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// ack is one write a writer issued: acknowledged, unless it is a
// history's pending write.
type ack struct {
	K     uint64
	Slot  int       // raw writer: block index in its region; file writer: -1
	Host  string    // the primary the write went to
	Start time.Time // when the write was issued
	At    time.Time // when it returned success (zero for the pending write)
}

// history is what one writer did in one round, in its own order.
type history struct {
	Acks []ack
	// Pending is the write issued last that did not return success: it
	// failed, or was in flight when the writer stopped. The volume may or
	// may not hold it; nothing after it was issued.
	Pending *ack
}

// items is the acknowledged writes followed by the pending one.
func (h history) items() []ack {
	if h.Pending == nil {
		return h.Acks
	}
	return append(h.Acks[:len(h.Acks):len(h.Acks)], *h.Pending)
}

// prefixResult is the verdict on one writer's history in one round.
type prefixResult struct {
	Acked int // writes acknowledged in the round
	// Present is how many of them the volume holds, counted as the longest
	// prefix of the history whose effect is visible (the pending write
	// does not count).
	Present int
	Lost    int     // Acked - Present
	Lost1st int     // index in Acks of the first lost write (valid if Lost > 0)
	Landed  bool    // the pending write is on the volume
	Errors  []error // holes, stray or damaged records: the volume is no prefix
}

// noRecord marks a slot that holds no intact record of the writer.
const noRecord = -1

// checkSlots checks a writer that overwrites the slots of a region (record
// k goes to slot k mod n): obs holds the record number found in each slot
// (noRecord if none), base what the slots held when the round began. The
// volume must show the writes of a prefix of the history and nothing else:
// slot s holds the newest record of that prefix written to s, or base[s].
func checkSlots(base, obs []int64, h history) prefixResult {
	items := h.items()
	// The last write of the prefix is visible in its slot (nothing later in
	// the prefix overwrote it), so the prefix ends at the last write found.
	p := 0
	for i := len(items) - 1; i >= 0; i-- {
		if obs[items[i].Slot] == int64(items[i].K) {
			p = i + 1
			break
		}
	}
	want := append([]int64(nil), base...)
	for _, it := range items[:p] {
		want[it.Slot] = int64(it.K)
	}
	r := verdict(len(h.Acks), p)
	bad := 0
	for s := range obs {
		if obs[s] == want[s] {
			continue
		}
		if bad++; bad <= 5 {
			r.Errors = append(r.Errors, fmt.Errorf("slot %d holds %s, want %s (the writer's first %d writes of the round)",
				s, recordName(obs[s]), recordName(want[s]), p))
		}
	}
	if bad > 5 {
		r.Errors = append(r.Errors, fmt.Errorf("%d more slots differ", bad-5))
	}
	return r
}

// checkFiles checks a writer that puts each record in a file of its own:
// found reports whether record k's file holds it intact. The files found
// must be those of a prefix of the history.
func checkFiles(h history, found func(k uint64) bool) prefixResult {
	items := h.items()
	on := make([]bool, len(items))
	p := 0
	for i, it := range items {
		if on[i] = found(it.K); on[i] {
			p = i + 1
		}
	}
	r := verdict(len(h.Acks), p)
	holes := 0
	for i := range items[:p] {
		if on[i] {
			continue
		}
		if holes++; holes <= 5 {
			r.Errors = append(r.Errors, fmt.Errorf("record %d is missing or damaged but the later record %d is there: not a prefix",
				items[i].K, items[p-1].K))
		}
	}
	if holes > 5 {
		r.Errors = append(r.Errors, fmt.Errorf("%d more holes", holes-5))
	}
	return r
}

// verdict counts a prefix of p writes out of acked acknowledged ones.
func verdict(acked, p int) prefixResult {
	r := prefixResult{Acked: acked, Present: min(p, acked), Landed: p > acked}
	r.Lost = acked - r.Present
	r.Lost1st = r.Present
	return r
}

func recordName(k int64) string {
	if k == noRecord {
		return "no record"
	}
	return fmt.Sprintf("record %d", k)
}

// ledgerFile keeps every write a writer issued, off the volume: one line
// per write, written as it returns.
// It is gzipped (a round acknowledges tens of thousands of writes); zcat
// reads it, also while the campaign runs, up to the last flush.
type ledgerFile struct {
	mu sync.Mutex
	f  *os.File
	z  *gzip.Writer
	w  *bufio.Writer
}

func openLedger(path string) (*ledgerFile, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("ledger: %w", err)
	}
	z, err := gzip.NewWriterLevel(f, gzip.BestSpeed)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("ledger: %w", err)
	}
	l := &ledgerFile{f: f, z: z, w: bufio.NewWriter(z)}
	fmt.Fprintln(l.w, "# round\twriter\trecord\tslot\thost\tissued_unix_ns\tacknowledged_unix_ns\tresult")
	return l, nil
}

// add records one write; err is nil for an acknowledged one.
func (l *ledgerFile) add(round int, writer string, a ack, err error) {
	res := "ok"
	if err != nil {
		res = "failed: " + err.Error()
	}
	var at int64
	if !a.At.IsZero() {
		at = a.At.UnixNano()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.w, "%d\t%s\t%d\t%d\t%s\t%d\t%d\t%s\n", round, writer, a.K, a.Slot, a.Host, a.Start.UnixNano(), at, res)
}

// note adds a comment line, e.g. the verdict of a round.
func (l *ledgerFile) note(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.w, "# "+format+"\n", args...)
}

// flush writes what is buffered to the file.
func (l *ledgerFile) flush() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.w.Flush(); err != nil {
		return err
	}
	return l.z.Flush()
}

// Close flushes and closes the file.
func (l *ledgerFile) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	err := errors.Join(l.w.Flush(), l.z.Close())
	return errors.Join(err, l.f.Close())
}
