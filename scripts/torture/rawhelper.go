package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// helperArg, as the first argument, makes the runner's binary the raw
// writer's helper process instead of a campaign.
//
// The raw writes run in a process of their own because the runner must
// never hold a descriptor of the FUSE export while it starts commands:
// execve closes the child's copy of every close-on-exec descriptor, and
// closing a FUSE file sends FUSE_FLUSH to the daemon and waits for its
// answer. With the primary's daemon stopped (SIGSTOP) every command the
// runner started (`ldmirror promote`, mount) hung in execve, before it
// could be killed by its deadline (docs/reliability.md, "The workload").
const helperArg = "raw-writer-helper"

// Lines the helper writes on stdout, one per write:
//
//	ok <k> <issued ns> <acknowledged ns>
//	fail <k> <issued ns> <error>
//	stopped <next k>
//
// Times are Unix nanoseconds of the machine's clock, which the runner
// shares.

// rawHelperMain writes records to the export file until its stdin closes
// (stop) or a write fails. Arguments: path, first block, slots, writer ID,
// first record number, round, writes per second (0: as fast as it can).
func rawHelperMain(args []string) int {
	if len(args) != 7 {
		fmt.Fprintf(os.Stderr, "%s: want 7 arguments, got %d\n", helperArg, len(args))
		return 2
	}
	var n [6]int64
	for i, a := range args[1:] {
		v, err := strconv.ParseInt(a, 10, 64)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: argument %d: %v\n", helperArg, i+2, err)
			return 2
		}
		n[i] = v
	}
	path, first, slots, id, k, round, rate := args[0], n[0], n[1], uint32(n[2]), uint64(n[3]), int(n[4]), n[5]
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_DIRECT|unix.O_DSYNC, 0)
	if err != nil {
		fmt.Fprintf(out, "fail %d %d %s\n", k, time.Now().UnixNano(), oneLine(err))
		return 1
	}
	defer f.Close()
	// O_DIRECT wants an aligned buffer: an anonymous mapping is page aligned.
	buf, err := unix.Mmap(-1, 0, recordSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		fmt.Fprintf(out, "fail %d %d buffer: %s\n", k, time.Now().UnixNano(), oneLine(err))
		return 1
	}
	defer unix.Munmap(buf)
	stop := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(stop)
	}()
	// Pacing keeps the ledger and the resyncs of a round to a size a
	// 2-core machine shared with other work gets through in time.
	var pace <-chan time.Time
	if rate > 0 {
		t := time.NewTicker(time.Second / time.Duration(rate))
		defer t.Stop()
		pace = t.C
	}
	for ; ; k++ {
		if pace != nil {
			select {
			case <-stop:
			case <-pace:
			}
		}
		select {
		case <-stop:
			fmt.Fprintf(out, "stopped %d\n", k)
			return 0
		default:
		}
		encodeRecord(buf, id, k, round)
		start := time.Now().UnixNano()
		_, err := f.WriteAt(buf, (first+int64(k%uint64(slots)))*recordSize)
		if err != nil {
			fmt.Fprintf(out, "fail %d %d %s\n", k, start, oneLine(err))
			return 1
		}
		fmt.Fprintf(out, "ok %d %d %d\n", k, start, time.Now().UnixNano())
		// The runner counts acknowledgements as they come.
		if err := out.Flush(); err != nil {
			return 1
		}
	}
}

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", " ") }

// rawWriter writes records straight to a region of the primary's export
// file, opened O_DIRECT|O_DSYNC, through a helper process (see helperArg):
// each write returns only once the primary reported it durable (sync
// mode: on both hosts). Record k goes to block first + k mod slots.
type rawWriter struct {
	writerBase
	first, slots int
	rate         int
	self         string // the runner's executable
	path         string // the export file of this round's primary
	// base is the record number each slot held after the last check
	// (noRecord: none).
	base []int64
}

func newRawWriter(ledger *ledgerFile, id uint32, label string, first, slots, rate int) (*rawWriter, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("%s writer: find the runner's executable: %w", label, err)
	}
	return &rawWriter{writerBase: writerBase{id: id, label: label, ledger: ledger},
		first: first, slots: slots, rate: rate, self: self, base: slices.Repeat([]int64{noRecord}, slots)}, nil
}

// beginOn starts a round on the export file at path.
func (w *rawWriter) beginOn(round int, host, path string) {
	w.begin(round, host)
	w.path = path
}

func (w *rawWriter) run(stop <-chan struct{}) error {
	w.mu.Lock()
	k, round, host := w.next, w.round, w.host
	w.mu.Unlock()
	cmd := exec.Command(w.self, helperArg, w.path, strconv.Itoa(w.first), strconv.Itoa(w.slots),
		strconv.Itoa(int(w.id)), strconv.FormatUint(k, 10), strconv.Itoa(round), strconv.Itoa(w.rate))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return fmt.Errorf("%s writer: %w", w.label, err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("%s writer: %w", w.label, err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s writer: %w", w.label, err)
	}
	var once sync.Once
	closeIn := func() { once.Do(func() { stdin.Close() }) }
	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		select {
		case <-stop:
			closeIn()
		case <-stopped:
		}
	}()
	failure, clean := w.readHelper(stdout, host)
	closeIn()
	werr := cmd.Wait()
	if failure == nil && !clean {
		// The helper ended without saying how: the write after the last
		// one it reported may have been issued.
		w.mu.Lock()
		a := ack{K: w.next, Slot: int(w.next % uint64(w.slots)), Host: host, Start: time.Now()}
		w.next++
		w.cur.Pending = &a
		w.mu.Unlock()
		failure = fmt.Errorf("%s writer helper ended without a verdict: %v %s", w.label, werr, strings.TrimSpace(stderr.String()))
	}
	return failure
}

// readHelper records the helper's lines until it closes stdout. It returns
// the write failure the helper reported, and whether it said it stopped.
func (w *rawWriter) readHelper(r io.Reader, host string) (failure error, clean bool) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.SplitN(sc.Text(), " ", 4)
		k, _ := strconv.ParseUint(f[min(1, len(f)-1)], 10, 64)
		switch {
		case f[0] == "ok" && len(f) == 4:
			start, _ := strconv.ParseInt(f[2], 10, 64)
			at, _ := strconv.ParseInt(f[3], 10, 64)
			w.record(ack{K: k, Slot: int(k % uint64(w.slots)), Host: host, Start: time.Unix(0, start), At: time.Unix(0, at)}, nil)
		case f[0] == "fail" && len(f) == 4:
			start, _ := strconv.ParseInt(f[2], 10, 64)
			failure = fmt.Errorf("%s writer: record %d: %s", w.label, k, f[3])
			w.record(ack{K: k, Slot: int(k % uint64(w.slots)), Host: host, Start: time.Unix(0, start)}, failure)
		case f[0] == "stopped":
			clean = true
		default:
			return fmt.Errorf("%s writer helper: unexpected line %q", w.label, sc.Text()), false
		}
	}
	return failure, clean
}

// record takes a write the helper reported: acknowledged if err is nil,
// else the round's pending write.
func (w *writerBase) record(a ack, err error) {
	w.mu.Lock()
	round := w.round
	w.next = a.K + 1
	if err == nil {
		w.cur.Acks = append(w.cur.Acks, a)
	} else {
		w.cur.Pending = &a
	}
	w.mu.Unlock()
	w.ledger.add(round, w.label, a, err)
}
