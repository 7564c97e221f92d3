package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ldmirror/ldmirror/export"
	"github.com/ldmirror/ldmirror/internal/netns"
	"github.com/ldmirror/ldmirror/volume"
)

// Limits of the runbook's waits. A round that exceeds one ends the
// campaign: the pair is stuck, which is a finding in itself.
const (
	settleLimit  = 120 * time.Second // undo → a primary serves with its peer uptodate
	quiesceLimit = 90 * time.Second  // writers stopped → both hosts in sync
	writerLimit  = 60 * time.Second  // writers stopped → they returned
	// notServingGrace is how long the runbook lets the named primary take
	// to serve again after the fault was undone before it treats it as
	// dead and promotes its uptodate peer (docs/cluster.md, "Manual
	// failover").
	notServingGrace = 30 * time.Second
	// refusalGrace is how long the runbook lets a primary refuse its peer
	// (last_error "peer refused") before it applies docs/operations.md's
	// remedy.
	refusalGrace = 10 * time.Second
	// unlinkedGrace is how long, once the fault is undone, a serving
	// primary may stay without its running peer, which neither refuses it
	// nor has a failed disk, before the operator restarts the peer's
	// daemon: more than the runbook (docs/reliability.md, Findings).
	unlinkedGrace = 20 * time.Second
	// keepRounds is how many rounds' directories of record files stay on
	// the file system, re-verified every round.
	keepRounds = 3
)

// campaign is one run of the runner: the lab, the processes, the writers
// and their ledger, and the verdicts so far.
type campaign struct {
	o    *owner
	opt  options
	root string // everything the campaign writes
	logs string // what it keeps: logs, ledger, schedule

	logw io.Writer
	lab  *netns.Lab
	h    *hosts
	smp  *sampler

	ledger *ledgerFile
	raw    *rawWriter
	ext4   *fileWriter
	// grow writes the growth region in disk-full rounds only (disk.go).
	grow *rawWriter
	// dir is slapd and the retrier proxy, ldapw the writer through them
	// (ldap.go); nil with --ldap-rate 0.
	dir   *directory
	ldapw *ldapWriter
	// ldapKept are the adds of earlier rounds that were on the volume
	// after their round: each round checks them again.
	ldapKept []uint64
	// retained are the record files of earlier rounds still on the file
	// system, checked again every round.
	retained map[int][]uint64
	fsBlocks int // the file system's size in 4 KiB blocks; the raw region follows

	primary string // the primary at the end of the last round
	// disks are the data hosts' volume file systems (disk.go).
	disks map[string]disk
	// keepVolumes: copy the volumes off the disks before they are
	// unmounted (a failure, --keep).
	keepVolumes bool
	mnt         string
	dev         string   // loop device the campaign attached, "" if none
	devFile     *os.File // dev held open, so that no one else's detach takes it
	mounted     bool
	// wl is the last round's workload: after an abort, main waits for its
	// writers once the daemons are gone.
	wl *workload

	splitSeen int
	results   []*roundResult
}

// roundRun is the state of the round in progress.
type roundRun struct {
	c    *campaign
	n    int
	spec faultSpec
	P, S string // primary and secondary when the round began
	// epoch0 is the epoch P served in when the round began.
	epoch0 uint64
	wl     *workload
	// logStart is each host's log size when the round began.
	logStart map[string]int64

	injected, resumed     time.Time
	undone                time.Time
	servedAt, redundantAt time.Time
	movedBy               string // promote or swap, if the role moved
	final                 string // the primary at the end
	tornDown              bool
	notes                 []string
	// refusals are the times the primary refused its peer and the runbook
	// discarded the peer's data to go on.
	refusals []string
	// restarts are the times the primary could not reach its running
	// peer and the operator restarted the peer's daemon.
	restarts []string
	// A disk-full round: the host whose disk was filled, whether its disk
	// failed, whether it was the primary's (which hands the role over).
	diskHost             string
	diskFailed, handOver bool
	// strayDisk: a disk failed that the round did not fill.
	strayDisk   bool
	attachTried map[string]time.Time
	attached    []string // hosts attach-disk took back
}

func (r *roundRun) notef(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.notes = append(r.notes, msg)
	r.c.logf("round %d: %s", r.n, msg)
}

// logf writes a timestamped line to the campaign log and stdout.
func (c *campaign) logf(format string, args ...any) {
	fmt.Fprintf(c.logw, "%s %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// exportFile is the primary host's FUSE export file.
func (c *campaign) exportFile(host string) string {
	return filepath.Join(c.h.dir[host], volume.ExportDir, export.FileName)
}

// releaseFS stops the writers that use the file system (the ext4 writer,
// the directory's client) and slapd, and releases the file system.
func (r *roundRun) releaseFS(ctx context.Context) error {
	wctx, cancel := context.WithTimeout(ctx, writerLimit)
	defer cancel()
	if err := r.wl.stopOne(wctx, r.c.ext4.name()); err != nil {
		return err
	}
	if r.c.ldapw != nil {
		if err := r.wl.stopOne(wctx, r.c.ldapw.name()); err != nil {
			return err
		}
	}
	r.stopSlapd()
	for _, n := range r.c.releaseMount(ctx) {
		r.notef("%s", n)
	}
	return nil
}

// stopSlapd stops the directory server, if one runs, before its file
// system is released.
func (r *roundRun) stopSlapd() {
	if r.c.dir == nil {
		return
	}
	if err := r.c.dir.stopSlapd(); err != nil {
		r.notef("%v", err)
	}
}

// teardown stops the writers and releases the file system, once.
func (r *roundRun) teardown(ctx context.Context) error {
	if r.tornDown {
		return nil
	}
	r.tornDown = true
	wctx, cancel := context.WithTimeout(ctx, writerLimit)
	defer cancel()
	if err := r.wl.Close(wctx); err != nil {
		return fmt.Errorf("writers on %s stuck: %w", r.P, err)
	}
	for w, err := range r.wl.failures() {
		r.notef("writer %s on %s ended: %v", w, r.P, err)
	}
	r.stopSlapd()
	for _, n := range r.c.releaseMount(ctx) {
		r.notef("%s", n)
	}
	return nil
}

// slotWriters are the writers of records to fixed regions of the volume.
func (c *campaign) slotWriters() []*rawWriter { return []*rawWriter{c.raw, c.grow} }

// roundDir is the directory of round n's record files.
func (c *campaign) roundDir(n int) string { return filepath.Join(c.mnt, fmt.Sprintf("r%04d", n)) }

// prepare mounts the file system on the round's primary, removes the
// record files of rounds no longer kept, and starts the writers.
// startWriters starts the round's writers on the primary and waits for
// their warm-up and the spec's lead; cf, the round's crash fault or nil,
// may have crashed the primary before or while they start.
func (c *campaign) startWriters(ctx context.Context, r *roundRun, cf *crashFault) error {
	if cf != nil && cf.died(r) {
		r.notef("%s died before the writers started", cf.host)
		c.withoutWriters(r)
		return nil
	}
	if err := c.prepare(ctx, r); err != nil {
		if cf == nil || !cf.diedSoon(ctx, r) {
			return fmt.Errorf("start the writers on %s: %w", r.P, err)
		}
		// The mount's own writes reached the point (an activity log's
		// first extent): the armed daemon crashed while the writers
		// started, which is what the round is for.
		r.notef("%s died while the writers started: %v", cf.host, err)
		for _, n := range c.releaseMount(ctx) {
			r.notef("%s", n)
		}
		c.withoutWriters(r)
		return nil
	}
	if err := waitFor(ctx, 30*time.Second, "each writer to have 20 writes acknowledged", func() bool {
		return r.wl.minAcked() >= 20 || len(r.wl.failures()) > 0
	}); err != nil {
		return err
	}
	if fails := r.wl.failures(); len(fails) > 0 {
		if cf == nil || !cf.died(r) {
			return fmt.Errorf("a writer failed before the fault: %v", fails)
		}
		r.notef("the armed %s crashed in the writers' warm-up: %v", cf.host, fails)
	}
	return hold(ctx, r.spec.Lead)
}

// withoutWriters begins the round with no writer: the armed daemon crashed
// before they could start, so the round is its recovery alone.
func (c *campaign) withoutWriters(r *roundRun) {
	c.raw.begin(r.n, r.P)
	c.grow.begin(r.n, r.P)
	c.ext4.begin(r.n, r.P)
	if c.ldapw != nil {
		c.ldapw.begin(r.n, r.P)
	}
	r.wl = startWorkload()
	c.wl = r.wl
}

func (c *campaign) prepare(ctx context.Context, r *roundRun) error {
	if err := c.attach(ctx, r.P); err != nil {
		return err
	}
	if err := c.mount(ctx); err != nil {
		return err
	}
	ents, err := os.ReadDir(c.mnt)
	if err != nil {
		return err
	}
	for _, e := range ents {
		n, err := strconv.Atoi(strings.TrimPrefix(e.Name(), "r"))
		if err != nil || !strings.HasPrefix(e.Name(), "r") {
			continue
		}
		if _, kept := c.retained[n]; !kept || n <= r.n-keepRounds {
			delete(c.retained, n)
			if err := os.RemoveAll(filepath.Join(c.mnt, e.Name())); err != nil {
				return err
			}
		}
	}
	dir := c.roundDir(r.n)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	if err := syncDir(c.mnt); err != nil {
		return err
	}
	c.raw.beginOn(r.n, r.P, c.exportFile(r.P))
	c.grow.beginOn(r.n, r.P, c.exportFile(r.P))
	c.ext4.beginIn(r.n, r.P, dir)
	ws := []writer{c.raw, c.ext4}
	if c.ldapw != nil {
		if err := c.dir.startSlapd(ctx, r.P); err != nil {
			return err
		}
		c.ldapw.begin(r.n, r.P)
		ws = append(ws, c.ldapw)
	}
	r.wl = startWorkload(ws...)
	c.wl = r.wl
	return nil
}

func syncDir(path string) error {
	d, err := os.Open(path)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// runRound plays one round: writers on the primary, the fault, the
// runbook's recovery, the checks. An error means the campaign cannot go
// on (the pair is stuck, a writer hangs); findings are in the result.
func (c *campaign) runRound(ctx context.Context, spec faultSpec) (*roundResult, error) {
	r := &roundRun{c: c, n: spec.Round, spec: spec, P: c.primary, S: other(c.primary), logStart: map[string]int64{}}
	res := &roundResult{N: r.n, Spec: spec, P: r.P}
	for _, h := range []string{"a", "b", "w"} {
		if fi, err := os.Stat(c.h.logPath(h)); err == nil {
			r.logStart[h] = fi.Size()
		}
	}
	c.logf("=== %s (primary %s)", spec, r.P)
	defer func() { c.saveRoundLogs(r, res) }()
	err := c.playRound(ctx, r, res)
	res.Notes = r.notes
	if err != nil {
		res.Failures = append(res.Failures, "round did not complete: "+err.Error())
		res.Aborted = true
		return res, err
	}
	return res, nil
}

func (c *campaign) playRound(ctx context.Context, r *roundRun, res *roundResult) error {
	st, err := c.h.status(ctx, r.P)
	if err != nil {
		return err
	}
	r.epoch0 = st.ServingEpoch
	f, err := newFault(r.spec)
	if err != nil {
		return err
	}
	if a, ok := f.(armer); ok {
		if err := a.arm(ctx, r); err != nil {
			return fmt.Errorf("arm %s: %w", r.spec.Kind, err)
		}
	}
	cf, _ := f.(*crashFault)
	if err := c.startWriters(ctx, r, cf); err != nil {
		return err
	}
	r.injected = time.Now()
	if err := f.inject(ctx, r); err != nil {
		return fmt.Errorf("inject %s: %w", r.spec.Kind, err)
	}
	c.logf("round %d: injected %s (%d writes acknowledged before)", r.n, r.spec.Kind, r.wl.totalAcked())
	if r.spec.failover() {
		if err := hold(ctx, r.spec.React); err != nil {
			return err
		}
		c.failover(ctx, r, r.P, r.S)
	}
	if err := hold(ctx, r.spec.Hold); err != nil {
		return err
	}
	if err := f.undo(ctx, r); err != nil {
		return fmt.Errorf("undo %s: %w", r.spec.Kind, err)
	}
	r.undone = time.Now()
	if cf != nil {
		res.Crash = cf.outcome
		if cf.outcome == crashElsewhere {
			res.fail("%s", cf.detail)
		}
	}
	if err := c.settle(ctx, r); err != nil {
		return err
	}
	if err := r.teardown(ctx); err != nil {
		return err
	}
	c.primary = r.final
	res.Final = r.final
	res.DiskFailed, res.StrayDisk, res.Attached = r.diskFailed, r.strayDisk, len(r.attached)
	res.Recovery = r.redundantAt.Sub(r.injected)
	res.MovedBy = r.movedBy
	for _, f := range r.refusals {
		res.Refusals++
		res.fail("recovery needed more than the runbook: %s", f)
	}
	for _, f := range r.restarts {
		res.Restarts++
		res.fail("recovery needed more than the runbook: %s", f)
	}
	note, err := c.quiesce(ctx, r.final)
	if err != nil {
		return err
	}
	if note != "" {
		res.GenMismatch = true
		r.notef("%s", note)
	}
	return c.check(ctx, r, res)
}

// saveRoundLogs keeps what each process logged during the round, the
// status samples and the verdict under rounds/NNN.
func (c *campaign) saveRoundLogs(r *roundRun, res *roundResult) {
	dir := filepath.Join(c.logs, "rounds", fmt.Sprintf("%03d", r.n))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		c.logf("round %d: keep logs: %v", r.n, err)
		return
	}
	for _, h := range []string{"a", "b", "w"} {
		if err := copyTail(c.h.logPath(h), filepath.Join(dir, h+".log"), r.logStart[h]); err != nil {
			c.logf("round %d: keep the log of %s: %v", r.n, h, err)
		}
	}
	if f, err := os.Create(filepath.Join(dir, "samples.jsonl")); err == nil {
		enc := json.NewEncoder(f)
		for _, s := range res.samples {
			_ = enc.Encode(s)
		}
		f.Close()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s\nprimary %s -> %s (moved by %q)\n", r.spec, r.P, res.Final, res.MovedBy)
	for _, n := range r.notes {
		fmt.Fprintf(&b, "note: %s\n", n)
	}
	for _, f := range res.Failures {
		fmt.Fprintf(&b, "FAILURE: %s\n", f)
	}
	fmt.Fprintf(&b, "%s\n", res.line())
	_ = os.WriteFile(filepath.Join(dir, "round.txt"), []byte(b.String()), 0o644)
}

// copyTail copies src from offset from to dst.
func copyTail(src, dst string, from int64) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if _, err := in.Seek(from, io.SeekStart); err != nil {
		return err
	}
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// sortedSamples returns samples ordered by time.
func sortedSamples(s []sample) []sample {
	out := slices.Clone(s)
	sort.SliceStable(out, func(i, j int) bool { return out[i].T.Before(out[j].T) })
	return out
}
