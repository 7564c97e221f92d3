package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// writerVerdict is one writer's history in a round and what the volume
// shows of it.
type writerVerdict struct {
	Name string
	prefixResult
	hist history
}

// check runs the checker after a round: the writers' records on the
// primary's volume (a prefix of each writer's history; in sync mode, or
// when the role did not move by a failover, all of it), the file system
// (e2fsck -fn after a mount replayed its journal), the two backing files
// byte for byte, and the control plane's one-writer-per-epoch rule.
func (c *campaign) check(ctx context.Context, r *roundRun, res *roundResult) error {
	p := r.final
	res.samples = sortedSamples(c.smp.drain())
	fileH := c.ext4.history()

	for _, w := range c.slotWriters() {
		h := w.history()
		obs, foreign, err := readSlots(filepath.Join(c.h.dir[p], "volume.img"), w)
		if err != nil {
			return err
		}
		v := writerVerdict{Name: w.name(), prefixResult: checkSlots(w.base, obs, h), hist: h}
		v.Errors = append(v.Errors, foreign...)
		w.base = obs
		res.writers = append(res.writers, v)
	}

	fv, lv, err := c.checkFS(ctx, r, res, fileH)
	if err != nil {
		return err
	}
	res.writers = append(res.writers, fv)
	if c.ldapw != nil {
		res.writers = append(res.writers, lv)
	}

	// mount and e2fsck wrote to the volume: wait until the peer has it all.
	if _, err := c.quiesce(ctx, p); err != nil {
		return err
	}
	if err := c.compare(ctx, r, res); err != nil {
		return err
	}
	splits := c.smp.splitBrains(c.splitSeen)
	c.splitSeen += len(splits)
	for _, s := range splits {
		res.SplitBrains = append(res.SplitBrains, s)
		res.fail("two primaries in one epoch: %s", s)
	}
	c.judge(r, res)
	c.observePartition(r, res)
	c.ledger.note("round %d verdict: %s", r.n, res.line())
	return c.ledger.flush()
}

// readSlots reads w's region of a backing file: the record number of w in
// each slot (noRecord if the block holds none), and an error for every
// block that holds another writer's record.
func readSlots(path string, w *rawWriter) ([]int64, []error, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	buf := make([]byte, w.slots*recordSize)
	if _, err := f.ReadAt(buf, int64(w.first)*recordSize); err != nil {
		return nil, nil, fmt.Errorf("read the %s region of %s: %w", w.name(), path, err)
	}
	obs := make([]int64, w.slots)
	var foreign []error
	for s := range obs {
		obs[s] = noRecord
		id, _, ok := decodeRecord(buf[s*recordSize:])
		switch {
		case !ok:
		case id.Writer != w.id:
			foreign = append(foreign, fmt.Errorf("slot %d of the %s region holds %s, a record of another writer", s, w.name(), id))
		default:
			obs[s] = int64(id.K)
		}
	}
	return obs, foreign, nil
}

// checkFS mounts the file system on the primary (which replays its
// journal, as a directory server's restart would), checks the record files
// of this round and of the rounds kept and the directory's entries,
// unmounts it and runs e2fsck -fn.
func (c *campaign) checkFS(ctx context.Context, r *roundRun, res *roundResult, h history) (v, lv writerVerdict, err error) {
	v = writerVerdict{Name: c.ext4.name(), hist: h}
	var lh history
	if c.ldapw != nil {
		lh = c.ldapw.history()
		lv = writerVerdict{Name: c.ldapw.name(), hist: lh}
	}
	if err := c.attach(ctx, r.final); err != nil {
		return v, lv, err
	}
	defer c.releaseMount(ctx)
	if err := c.mount(ctx); err != nil {
		res.fail("mount of the file system on %s: %v", r.final, err)
		v.prefixResult = checkFiles(h, func(uint64) bool { return false })
		lv.prefixResult = checkFiles(lh, func(uint64) bool { return false })
	} else {
		v.prefixResult = c.verifyFiles(r, h)
		if c.ldapw != nil {
			if lv, err = c.checkLDAP(ctx, r, lh); err != nil {
				return v, lv, err
			}
		}
		if _, err := run(ctx, 60*time.Second, "umount", c.mnt); err != nil {
			return v, lv, err
		}
		c.mounted = false
	}
	out, err := run(ctx, 300*time.Second, "e2fsck", "-fn", c.dev)
	dir := filepath.Join(c.logs, "rounds", fmt.Sprintf("%03d", r.n))
	_ = os.MkdirAll(dir, 0o755)
	_ = os.WriteFile(filepath.Join(dir, "fsck.txt"), []byte(out), 0o644)
	if err == nil {
		return v, lv, nil
	}
	res.FsckFailed = true
	res.fail("e2fsck -fn on %s's file system: %v", r.final, firstLines(err.Error(), 8))
	// Repair, so that the next rounds test something: e2fsck -fy, and if
	// that does not make it clean, a new file system.
	fix, ferr := run(ctx, 300*time.Second, "e2fsck", "-fy", c.dev)
	_ = os.WriteFile(filepath.Join(dir, "fsck-repair.txt"), []byte(fix), 0o644)
	if _, err := run(ctx, 300*time.Second, "e2fsck", "-fn", c.dev); err == nil {
		r.notef("e2fsck -fy repaired the file system (%v)", ferr)
		return v, lv, nil
	}
	if _, err := run(ctx, 120*time.Second, "mkfs.ext4", "-q", "-F", "-b", "4096",
		"-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0", c.dev, strconv.Itoa(c.fsBlocks)); err != nil {
		return v, lv, err
	}
	clear(c.retained)
	r.notef("e2fsck -fy could not repair the file system: made a new one")
	if c.dir != nil {
		// The directory starts again, empty.
		c.ldapKept = nil
		if err := c.mount(ctx); err != nil {
			return v, lv, err
		}
		if err := c.dir.seed(ctx); err != nil {
			return v, lv, err
		}
	}
	return v, lv, nil
}

// verifyFiles checks the record files on the mounted file system: this
// round's must be a prefix of the writer's history, with no stray file,
// and the kept earlier rounds' must all still be there.
func (c *campaign) verifyFiles(r *roundRun, h history) prefixResult {
	dir := c.roundDir(r.n)
	holds := func(dir string, k uint64) bool {
		b, err := os.ReadFile(filepath.Join(dir, strconv.FormatUint(k, 10)))
		if err != nil || len(b) != recordSize {
			return false
		}
		id, _, ok := decodeRecord(b)
		return ok && id == recordID{fileWriterID, k}
	}
	res := checkFiles(h, func(k uint64) bool { return holds(dir, k) })
	issued := map[string]bool{}
	for _, it := range h.items() {
		issued[strconv.FormatUint(it.K, 10)] = true
	}
	if ents, err := os.ReadDir(dir); err == nil {
		for _, e := range ents {
			if !issued[e.Name()] {
				res.Errors = append(res.Errors, fmt.Errorf("stray file %s in %s: no write of that name was issued", e.Name(), dir))
			}
		}
	}
	for n, ks := range c.retained {
		gone := 0
		for _, k := range ks {
			if !holds(c.roundDir(n), k) {
				if gone++; gone <= 3 {
					res.Errors = append(res.Errors, fmt.Errorf("record file %d of round %d, present after that round, is gone or damaged", k, n))
				}
			}
		}
		if gone > 3 {
			res.Errors = append(res.Errors, fmt.Errorf("%d more record files of round %d are gone or damaged", gone-3, n))
		}
	}
	items := h.items()
	kept := res.Present
	if res.Landed {
		kept++
	}
	ks := make([]uint64, 0, kept)
	for _, it := range items[:kept] {
		ks = append(ks, it.K)
	}
	c.retained[r.n] = ks
	return res
}

// compare checks that the two backing files are byte-identical, with the
// standard library only; on a difference it records the blocks and asks
// the primary to verify and resync, so that later rounds start equal.
func (c *campaign) compare(ctx context.Context, r *roundRun, res *roundResult) error {
	a, b := filepath.Join(c.h.dir["a"], "volume.img"), filepath.Join(c.h.dir["b"], "volume.img")
	n, first, err := compareFiles(a, b)
	if err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	res.DiffBlocks = n
	res.fail("the backing files of a and b differ in %d blocks of 4 KiB although both report in sync (first at block %v)", n, first)
	out, err := c.h.cli(ctx, 300*time.Second, "verify", "--dir", c.h.dir[r.final])
	r.notef("ldmirror verify after the divergence: %s %v", strings.TrimSpace(out), err)
	if _, err := c.quiesce(ctx, r.final); err != nil {
		return err
	}
	if n2, _, err := compareFiles(a, b); err == nil {
		r.notef("after verify the backing files differ in %d blocks", n2)
	}
	return nil
}

// compareFiles counts the 4 KiB blocks in which files a and b differ and
// returns the first few of them.
func compareFiles(a, b string) (int, []int64, error) {
	fa, err := os.Open(a)
	if err != nil {
		return 0, nil, err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return 0, nil, err
	}
	defer fb.Close()
	const chunk = 1 << 20
	ba, bb := make([]byte, chunk), make([]byte, chunk)
	n := 0
	var first []int64
	for off := int64(0); ; off += chunk {
		na, erra := io.ReadFull(fa, ba)
		nb, errb := io.ReadFull(fb, bb)
		if na != nb {
			return n + 1, append(first, (off+int64(min(na, nb)))/recordSize), fmt.Errorf("%s and %s differ in size", a, b)
		}
		for i := 0; i < na; i += recordSize {
			if !bytes.Equal(ba[i:min(i+recordSize, na)], bb[i:min(i+recordSize, na)]) {
				n++
				if len(first) < 8 {
					first = append(first, (off+int64(i))/recordSize)
				}
			}
		}
		if erra != nil || errb != nil {
			if (erra == io.EOF || erra == io.ErrUnexpectedEOF) && (errb == io.EOF || errb == io.ErrUnexpectedEOF) {
				return n, first, nil
			}
			return n, first, fmt.Errorf("compare %s and %s: %v, %v", a, b, erra, errb)
		}
	}
}

// judge decides what the writers' verdicts mean for this round. A write
// may be missing only in async mode and only when the role moved to the
// peer by a promotion while the primary was gone: then the missing writes
// must be a suffix of each writer's history (checkSlots and checkFiles
// found a prefix) and no more than docs/journal.md's bound, the journal
// lag when the primary lost its peer plus what it acknowledged within one
// --timeout after. In sync mode a deposed primary acknowledges nothing
// after its successor serves (docs/cluster.md, Fencing).
func (c *campaign) judge(r *roundRun, res *roundResult) {
	for _, w := range res.writers {
		res.Acked += w.Acked
		res.Lost += w.Lost
		if len(w.Errors) > 0 {
			res.Holes++
			msgs := make([]string, len(w.Errors))
			for i, e := range w.Errors {
				msgs[i] = e.Error()
			}
			res.fail("%s writer: the volume is not a prefix of its writes: %s", w.Name, strings.Join(msgs, "; "))
		}
		if w.Lost > 0 {
			first := w.hist.Acks[w.Lost1st]
			last := w.hist.Acks[len(w.hist.Acks)-1]
			res.lossNotes = append(res.lossNotes, fmt.Sprintf("%s: %d of %d lost, records %d to %d, acknowledged %v to %v after the fault",
				w.Name, w.Lost, w.Acked, first.K, last.K, first.At.Sub(r.injected).Round(time.Millisecond), last.At.Sub(r.injected).Round(time.Millisecond)))
		}
	}
	for _, n := range res.lossNotes {
		r.notef("loss: %s", n)
	}
	res.LossAllowed = c.opt.mode == "async" && r.final != r.P && r.movedBy == "promote"
	res.Bound = -1
	if res.LossAllowed {
		// docs/journal.md: what the primary acknowledged "until it
		// noticed the loss (at most --timeout)". Count the lost writes
		// acknowledged later than that, whatever the count bound says.
		in := r.afterLoss()
		for _, w := range res.writers {
			for _, a := range w.hist.Acks[w.Lost1st:] {
				if a.At.After(r.injected) && !in(a.At) {
					res.LateLost++
				}
			}
		}
		if res.LateLost > 0 {
			r.notef("%d lost writes were acknowledged more than --timeout (%v) after the primary lost its peer", res.LateLost, daemonTimeout)
		}
		res.Bound, res.boundNote = c.lossBound(r, res)
		r.notef("async loss bound %d: %s", res.Bound, res.boundNote)
		if res.Lost > res.Bound {
			res.fail("lost %d acknowledged writes, more than docs/journal.md's bound of %d (%s): %s",
				res.Lost, res.Bound, res.boundNote, strings.Join(res.lossNotes, "; "))
		}
	} else if res.Lost > 0 {
		res.fail("lost %d acknowledged writes (%s mode, primary %s -> %s, moved by %q): %s",
			res.Lost, c.opt.mode, r.P, r.final, r.movedBy, strings.Join(res.lossNotes, "; "))
	}
	if r.final == r.P {
		return
	}
	// Writes the deposed primary acknowledged although they were issued
	// after the sampler saw its successor serve in a later epoch.
	var deposed time.Time
	for _, s := range res.samples {
		if e, ok := s.primaryIn(); ok && s.Host == r.final && e > r.epoch0 {
			deposed = s.T
			break
		}
	}
	if deposed.IsZero() {
		return
	}
	for _, w := range res.writers {
		for _, a := range w.hist.Acks {
			if a.Host == r.P && a.Start.After(deposed) {
				res.StaleAcks++
			}
		}
	}
	if res.StaleAcks > 0 {
		r.notef("%s acknowledged %d writes issued after %s was seen serving a later epoch (at %s)",
			r.P, res.StaleAcks, r.final, deposed.Format("15:04:05.000"))
	}
	if res.StaleAcks > 0 && c.opt.mode == "sync" {
		res.fail("split-brain writes: %s acknowledged %d writes issued after %s was seen serving a later epoch (at %s)",
			r.P, res.StaleAcks, r.final, deposed.Format("15:04:05.000"))
	}
}

// lossBound is docs/journal.md's bound for the round: the journal lag of
// the primary in its last status sample before the fault, plus the
// writes it acknowledged from that sample until one --timeout after the
// fault, and (a stopped primary) within one --timeout after it resumed,
// plus one write in flight per writer.
func (c *campaign) lossBound(r *roundRun, res *roundResult) (int, string) {
	var ts time.Time
	var lag uint64
	for _, s := range res.samples {
		if s.Host == r.P && s.Err == "" && !s.T.After(r.injected) {
			ts, lag = s.T, s.Lag
		}
	}
	note := ""
	if ts.IsZero() {
		ts = r.injected
		note = "no status sample of the primary before the fault: lag taken as 0; "
	}
	after := r.afterLoss()
	in := func(t time.Time) bool { return t.After(ts) && !t.After(r.injected) || after(t) }
	n := 0
	for _, w := range res.writers {
		for _, a := range w.hist.Acks {
			if a.Host == r.P && in(a.At) {
				n++
			}
		}
	}
	return int(lag) + n + len(res.writers), note + fmt.Sprintf("journal lag %d records %v before the fault, %d writes acknowledged in the window, %d in flight",
		lag, r.injected.Sub(ts).Round(time.Millisecond), n, len(res.writers))
}

// afterLoss reports whether t is within one --timeout after the primary
// lost its peer: after the fault, or, for a stopped primary, after it
// resumed (it notices the loss only when it runs again).
func (r *roundRun) afterLoss() func(time.Time) bool {
	return func(t time.Time) bool {
		if !t.Before(r.injected) && !t.After(r.injected.Add(daemonTimeout)) {
			return true
		}
		return !r.resumed.IsZero() && !t.Before(r.resumed) && !t.After(r.resumed.Add(daemonTimeout))
	}
}

// firstLines returns at most n lines of s.
func firstLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = append(lines[:n], fmt.Sprintf("(%d more lines)", len(lines)-n))
	}
	return strings.Join(lines, " | ")
}

// observePartition notes an a-b partition during which the primary
// acknowledged nothing although it still reached the witness: docs/cluster.md's
// failure matrix says it marks its peer outdated with the witness and goes
// on. Not a checker failure (nothing is lost), but the table counts it.
func (c *campaign) observePartition(r *roundRun, res *roundResult) {
	if r.spec.Kind != "partition-ab" || r.spec.Hold <= 3*daemonTimeout {
		return
	}
	from, to := r.injected.Add(3*daemonTimeout), r.undone
	n := 0
	for _, w := range res.writers {
		for _, a := range w.hist.Acks {
			if a.At.After(from) && a.At.Before(to) {
				n++
			}
		}
	}
	if n > 0 {
		return
	}
	leader := "unknown"
	for _, s := range res.samples {
		if s.Host == r.P && s.Err == "" && !s.T.After(r.injected) {
			leader = s.Leader
		}
	}
	res.SuspendedPartition = true
	r.notef("the primary %s acknowledged no write from 3 s into the a-b partition until it healed %v later (raft leader at the fault: %q)",
		r.P, to.Sub(from).Round(time.Millisecond), leader)
}
