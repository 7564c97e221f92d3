package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Writer IDs, written into every record.
const (
	rawWriterID  = 1
	fileWriterID = 2
	// growWriterID writes the growth region, only in a disk-full round:
	// fresh blocks the failing host has no space for (see disk.go).
	growWriterID = 3
)

// writer writes numbered records through the primary and keeps what was
// acknowledged. Its record numbers run on across rounds and are never
// reused, so a block or file read back names the one write it came from.
type writer interface {
	name() string
	// run writes until stop is closed or a write fails, and returns the
	// failure (nil when stopped).
	run(stop <-chan struct{}) error
	// history is a copy of what the writer did this round.
	history() history
	// acked is the number of writes acknowledged this round.
	acked() int
}

// writerBase is the bookkeeping both writers share.
type writerBase struct {
	id     uint32
	label  string
	ledger *ledgerFile

	mu    sync.Mutex
	next  uint64 // the next record number
	round int
	host  string
	cur   history
}

func (w *writerBase) name() string { return w.label }

// begin starts a round of writes through host.
func (w *writerBase) begin(round int, host string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.round, w.host, w.cur = round, host, history{}
}

// issue takes the next record number and records the write as pending.
func (w *writerBase) issue(slot func(k uint64) int) (ack, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	a := ack{K: w.next, Slot: slot(w.next), Host: w.host, Start: time.Now()}
	w.next++
	w.cur.Pending = &a
	return a, w.round
}

// done records the end of a write: acknowledged if err is nil.
func (w *writerBase) done(a ack, err error) {
	w.mu.Lock()
	round := w.round
	if err == nil {
		a.At = time.Now()
		w.cur.Acks = append(w.cur.Acks, a)
		w.cur.Pending = nil
	}
	w.mu.Unlock()
	w.ledger.add(round, w.label, a, err)
}

func (w *writerBase) history() history {
	w.mu.Lock()
	defer w.mu.Unlock()
	h := history{Acks: append([]ack(nil), w.cur.Acks...)}
	if w.cur.Pending != nil {
		p := *w.cur.Pending
		h.Pending = &p
	}
	return h
}

func (w *writerBase) acked() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.cur.Acks)
}

// fileWriter writes each record to a new file of an ext4 file system on
// the primary's export: create, write, fdatasync, close, fsync of the
// directory (so that the name too is durable when the write returns).
type fileWriter struct {
	writerBase
	dir string // this round's directory
}

// maxFiles is the most record files the ext4 writer writes in a round: a
// round whose recovery takes long would otherwise fill the file system
// (keepRounds rounds of files stay on it), which is not the fault the
// round plays. It then waits to be stopped.
const maxFiles = 3000

func newFileWriter(ledger *ledgerFile) *fileWriter {
	return &fileWriter{writerBase: writerBase{id: fileWriterID, label: "ext4", ledger: ledger}}
}

// beginIn starts a round in directory dir, which exists.
func (w *fileWriter) beginIn(round int, host, dir string) {
	w.begin(round, host)
	w.dir = dir
}

func (w *fileWriter) run(stop <-chan struct{}) error {
	d, err := os.Open(w.dir)
	if err != nil {
		return fmt.Errorf("ext4 writer: %w", err)
	}
	defer d.Close()
	buf := make([]byte, recordSize)
	noSlot := func(uint64) int { return -1 }
	for {
		select {
		case <-stop:
			return nil
		default:
		}
		if w.acked() >= maxFiles {
			<-stop
			return nil
		}
		a, round := w.issue(noSlot)
		encodeRecord(buf, w.id, a.K, round)
		err := writeFileSynced(filepath.Join(w.dir, strconv.FormatUint(a.K, 10)), buf)
		if err == nil {
			if err = d.Sync(); err != nil {
				err = fmt.Errorf("fsync of the directory: %w", err)
			}
		}
		w.done(a, err)
		if err != nil {
			return fmt.Errorf("ext4 writer: record %d: %w", a.K, err)
		}
	}
}

// writeFileSynced creates path with b and fdatasyncs it.
func writeFileSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		f.Close()
		return fmt.Errorf("fdatasync: %w", err)
	}
	return f.Close()
}

// workload runs writers, each on a goroutine of its own, until each is
// stopped or fails. Close stops them all and waits for them.
type workload struct {
	writers []writer
	stops   map[string]chan struct{}
	dones   map[string]chan struct{}

	mu   sync.Mutex
	errs map[string]error
}

func startWorkload(ws ...writer) *workload {
	l := &workload{stops: map[string]chan struct{}{}, dones: map[string]chan struct{}{}, errs: map[string]error{}}
	for _, w := range ws {
		l.add(w)
	}
	return l
}

// add starts one more writer. Like the other methods but failures, it is
// called from the campaign's goroutine only.
func (l *workload) add(w writer) {
	stop, done := make(chan struct{}), make(chan struct{})
	l.writers = append(l.writers, w)
	l.stops[w.name()], l.dones[w.name()] = stop, done
	go func() {
		defer close(done)
		err := w.run(stop)
		l.mu.Lock()
		l.errs[w.name()] = err
		l.mu.Unlock()
	}()
}

// stopOne stops the writer called name, if the workload has one, and
// waits until it returned.
func (l *workload) stopOne(ctx context.Context, name string) error {
	if l.stops[name] == nil {
		return nil
	}
	select {
	case <-l.stops[name]:
	default:
		close(l.stops[name])
	}
	select {
	case <-l.dones[name]:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("writer %s did not return: %w", name, ctx.Err())
	}
}

// Close stops every writer and waits for them until ctx ends; a writer
// still blocked in a write then is named in the error.
func (l *workload) Close(ctx context.Context) error {
	var errs []error
	for _, w := range l.writers {
		if err := l.stopOne(ctx, w.name()); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// failures returns how each writer that failed ended.
func (l *workload) failures() map[string]error {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := map[string]error{}
	for n, err := range l.errs {
		if err != nil {
			out[n] = err
		}
	}
	return out
}

// minAcked is the fewest writes any writer has had acknowledged this round.
func (l *workload) minAcked() int {
	n := -1
	for _, w := range l.writers {
		if a := w.acked(); n < 0 || a < n {
			n = a
		}
	}
	return max(n, 0)
}

// totalAcked is the writes acknowledged this round by all writers.
func (l *workload) totalAcked() int {
	n := 0
	for _, w := range l.writers {
		n += w.acked()
	}
	return n
}
