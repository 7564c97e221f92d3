package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/export"
	"github.com/ldmirror/ldmirror/internal/netns"
	"github.com/ldmirror/ldmirror/node"
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

// setup builds the binary, the lab and the volumes, starts the witness and
// both daemons, makes a the first primary (forced: a new pair has no
// uptodate host), and makes the file system.
func (c *campaign) setup(ctx context.Context) error {
	bin := filepath.Join(c.root, "bin", "ldmirror")
	if err := buildBinary(ctx, bin); err != nil {
		return err
	}
	// c is the directory's client host: the retrier proxy runs there.
	c.lab = netns.NewLab(c.o, "a", "b", "w", "c")
	if err := c.mountDisks(ctx, c.opt.size+c.opt.headroom); err != nil {
		return err
	}
	var daemonX []string
	daemonX = append(daemonX, "--mode", c.opt.mode)
	if c.opt.mode == "async" {
		daemonX = append(daemonX, "--journal-size", c.opt.journalSize)
	}
	daemonX = append(daemonX, c.opt.daemonArgs...)
	dirs := map[string]string{"a": c.disks["a"].volDir(), "b": c.disks["b"].volDir(), "w": filepath.Join(c.root, "w")}
	h, err := newHosts(ctx, c.lab, bin, c.root, c.logs, strconv.FormatInt(c.opt.size, 10), dirs, daemonX, c.logf)
	if err != nil {
		return err
	}
	c.h = h
	// Cleanups run last registered first: the processes die before the
	// file system is released, so that no umount waits on a stopped daemon.
	c.o.Cleanup(func() { c.releaseMount(context.Background()) })
	c.o.Cleanup(h.Close)
	for _, host := range []string{"w", "b", "a"} {
		if err := h.start(ctx, host, 0); err != nil {
			return err
		}
	}
	if err := waitFor(ctx, 30*time.Second, "the members to join and a to be promoted", func() bool {
		_, err := h.cli(ctx, 10*time.Second, "promote", "a", "--force", "--reason", "initial sync source", "--control", h.control("a"))
		return err == nil
	}); err != nil {
		return err
	}
	c.primary = "a"
	c.smp = startSampler(h.status)
	c.o.Cleanup(c.smp.Close)
	if err := c.waitRedundant(ctx, "a", 60*time.Second); err != nil {
		return err
	}
	blocks := int(c.opt.size / recordSize)
	c.fsBlocks = blocks * 3 / 4
	growFirst := blocks - growBlocks
	if c.raw, err = newRawWriter(c.ledger, rawWriterID, "raw", c.fsBlocks, growFirst-c.fsBlocks, c.opt.rawRate); err != nil {
		return err
	}
	if c.grow, err = newRawWriter(c.ledger, growWriterID, "grow", growFirst, growBlocks, growRate); err != nil {
		return err
	}
	c.ext4 = newFileWriter(c.ledger)
	c.retained = map[int][]uint64{}
	if err := c.attach(ctx, "a"); err != nil {
		return err
	}
	// nodiscard and no lazy init: no background writes after mount that
	// would keep the hosts from being quiet when the volumes are compared.
	if _, err := run(ctx, 120*time.Second, "mkfs.ext4", "-q", "-F", "-b", "4096",
		"-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0", c.dev, strconv.Itoa(c.fsBlocks)); err != nil {
		return err
	}
	if c.ldapEnabled() {
		if err := c.mount(ctx); err != nil {
			return err
		}
		if err := c.setupDirectory(ctx); err != nil {
			return err
		}
		c.ldapw = newLDAPWriter(c.ledger, c.dir, c.opt.ldapRate)
	}
	c.releaseMount(ctx)
	if _, err := c.quiesce(ctx, "a"); err != nil {
		return err
	}
	c.smp.drain()
	c.logf("setup: a primary, b in sync; ext4 on blocks 0-%d, raw records on blocks %d-%d, the growth region on blocks %d-%d",
		c.fsBlocks-1, c.fsBlocks, growFirst-1, growFirst, blocks-1)
	return nil
}

// buildBinary builds cmd/ldmirror of the module the runner belongs to, with
// the crash points compiled in (-tags failpoints): none is armed unless a
// run's environment names it (hosts.startArmed), and an unarmed point is
// one map lookup (internal/failpoint).
func buildBinary(ctx context.Context, out string) error {
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = "/usr/local/go/bin/go"
	}
	mod, err := exec.CommandContext(ctx, goTool, "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(mod)) == "" || strings.TrimSpace(string(mod)) == os.DevNull {
		return fmt.Errorf("run from the ldmirror module (go env GOMOD: %q, %v)", strings.TrimSpace(string(mod)), err)
	}
	cmd := exec.CommandContext(ctx, goTool, "build", "-tags", "failpoints", "-o", out, "./cmd/ldmirror")
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(mod)))
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build -tags failpoints ./cmd/ldmirror: %w\n%s", err, b)
	}
	return nil
}

// attach binds host's export to a loop device (ldmirror attach).
//
// The campaign keeps the device open until it detaches it. Other test
// runs on the machine attach and detach loop devices too, and one that
// detaches a device by a number it remembered may hit ours once the number
// was reused: the kernel then detaches it when its last user closes it,
// which, between an umount and e2fsck, left e2fsck no device
// (docs/reliability.md, "Found in the runner and the environment"). Held
// open, it stays ours until the campaign lets go.
func (c *campaign) attach(ctx context.Context, host string) error {
	var errs []error
	for range 3 {
		out, err := c.h.cli(ctx, 20*time.Second, "attach", "--dir", c.h.dir[host])
		if err != nil {
			return err
		}
		dev := strings.TrimSpace(out)
		f, err := os.Open(dev)
		if err != nil {
			return err
		}
		b, err := os.ReadFile(filepath.Join("/sys/block", filepath.Base(dev), "loop", "backing_file"))
		if err == nil && strings.TrimSpace(string(b)) == c.exportFile(host) {
			c.dev, c.devFile = dev, f
			return nil
		}
		f.Close()
		errs = append(errs, fmt.Errorf("%s is not bound to %s after attach (backing file %q, %v)", dev, c.exportFile(host), strings.TrimSpace(string(b)), err))
	}
	return errors.Join(errs...)
}

// mount mounts the attached loop device on the campaign's mount point.
func (c *campaign) mount(ctx context.Context) error {
	if _, err := run(ctx, 60*time.Second, "mount", "-t", "ext4", c.dev, c.mnt); err != nil {
		return err
	}
	c.mounted = true
	return nil
}

// releaseMount unmounts the file system and detaches the loop device, as
// the runbook's operator does before a host may turn secondary. A file
// system whose device died (its primary was killed) is detached lazily.
func (c *campaign) releaseMount(ctx context.Context) []string {
	var notes []string
	if c.mounted {
		if _, err := run(ctx, 60*time.Second, "umount", c.mnt); err != nil {
			notes = append(notes, fmt.Sprintf("umount failed, detached lazily: %v", err))
			_, _ = run(ctx, 30*time.Second, "umount", "-l", c.mnt)
		}
		c.mounted = false
	}
	if c.dev != "" {
		if _, err := c.h.cli(ctx, 20*time.Second, "detach", c.dev); err != nil {
			notes = append(notes, fmt.Sprintf("detach %s: %v", c.dev, err))
		}
		c.devFile.Close()
		// A device still open (udev probes it after the umount) detaches
		// when its last user closes it: until then attach finds it.
		backing := filepath.Join("/sys/block", filepath.Base(c.dev), "loop", "backing_file")
		if err := waitFor(ctx, 20*time.Second, c.dev+" to be detached", func() bool {
			_, err := os.Stat(backing)
			return errors.Is(err, os.ErrNotExist)
		}); err != nil {
			notes = append(notes, err.Error())
		}
		c.dev = ""
	}
	return notes
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
	if cf != nil && cf.died(r) {
		// The armed daemon crashed before the writers could start: the
		// round is its recovery alone.
		r.notef("%s died before the writers started", cf.host)
		c.raw.begin(r.n, r.P)
		c.grow.begin(r.n, r.P)
		c.ext4.begin(r.n, r.P)
		if c.ldapw != nil {
			c.ldapw.begin(r.n, r.P)
		}
		r.wl = startWorkload()
		c.wl = r.wl
	} else {
		if err := c.prepare(ctx, r); err != nil {
			return fmt.Errorf("start the writers on %s: %w", r.P, err)
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
		if err := hold(ctx, r.spec.Lead); err != nil {
			return err
		}
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

// failover is the runbook's manual failover while the primary is dead,
// stopped or cut off: read `cluster status` on the survivor and promote it
// if it is uptodate (never --force).
func (c *campaign) failover(ctx context.Context, r *roundRun, from, to string) {
	var last string
	err := waitFor(ctx, 30*time.Second, "the failover to "+to, func() bool {
		v, err := c.h.clusterStatus(ctx, to)
		if err != nil {
			last = err.Error()
			return false
		}
		if v.Volume.Primary != from {
			last = fmt.Sprintf("no failover: the control plane names %q primary", v.Volume.Primary)
			return true
		}
		if d := v.disk(to); d != "uptodate" {
			last = fmt.Sprintf("no failover: %s is %s, and the runbook promotes only an uptodate host", to, d)
			return true
		}
		out, err := c.h.cli(ctx, 15*time.Second, "promote", to, "--control", c.h.control(to), "--timeout", "5s")
		if err != nil {
			last = err.Error()
			// Without quorum (the survivor's raft has not elected a
			// leader yet) the operator tries again; a refusal is final.
			return !strings.Contains(last, "no quorum")
		}
		r.movedBy = "promote"
		last = strings.TrimSpace(out)
		return true
	})
	if err != nil {
		last = fmt.Sprintf("%v (last: %s)", err, last)
	}
	r.notef("failover: %s", last)
}

// settle is the rest of the runbook once the fault is undone: wait until
// the control plane's primary serves with its peer connected, uptodate and
// replicating; release the file system on a primary the control plane no
// longer names (so that it can turn secondary); promote an uptodate host
// if no primary is named, or if the named one does not serve within
// notServingGrace. Who is primary comes from a read through the raft
// leader (`cluster status --consistent`): a host's own copy may lag, and
// right after a swap both hosts' copies may still name the old primary.
func (c *campaign) settle(ctx context.Context, r *roundRun) error {
	start := time.Now()
	var noPrimary, notServing time.Time
	var last string
	var cv *clusterView // the leader's state, refetched when a host knows a newer epoch
	var stuck error     // the deposed primary's writers did not return
	var refused, unlinked time.Time
	err := waitFor(ctx, settleLimit, "a primary serving with its peer uptodate and in sync", func() bool {
		sts := map[string]node.Status{}
		newest := uint64(0)
		for _, h := range dataHosts() {
			st, err := c.h.status(ctx, h)
			if err != nil {
				last = fmt.Sprintf("%s: %v", h, err)
				continue
			}
			sts[h] = st
			newest = max(newest, st.Epoch)
			c.attachDisks(ctx, r, h, nodeDisk{disk: st.Disk, primary: st.Role == cluster.RolePrimary, lastError: st.LastError})
		}
		if cv == nil || newest > cv.Volume.Epoch {
			v, err := c.consistentState(ctx)
			if err != nil {
				last = err.Error()
				return false
			}
			cv = &v
		}
		named, epoch := cv.Volume.Primary, cv.Volume.Epoch
		if named != "" && named != r.P && !r.tornDown {
			// The writers' primary was deposed: its writes fail, and it
			// turns secondary only once its export is released.
			if stuck = r.teardown(ctx); stuck != nil {
				return true
			}
		}
		if named == "" {
			if noPrimary.IsZero() {
				noPrimary = time.Now()
			} else if time.Since(noPrimary) > 5*time.Second {
				c.promoteUptodate(ctx, r)
				noPrimary, cv = time.Time{}, nil
			}
			last = fmt.Sprintf("no primary named (epoch %d)", epoch)
			return false
		}
		noPrimary = time.Time{}
		p, pok := sts[named]
		s, sok := sts[other(named)]
		serving := pok && p.Role == cluster.RolePrimary && p.Export != "" && p.ServingEpoch == p.Epoch && p.Epoch >= epoch
		if !serving {
			if notServing.IsZero() {
				notServing = time.Now()
			} else if time.Since(notServing) > notServingGrace {
				r.notef("runbook: %s is named primary but has not served for %v", named, notServingGrace)
				c.failover(ctx, r, named, other(named))
				notServing, cv = time.Time{}, nil
			}
			last = fmt.Sprintf("%s named primary in epoch %d, not serving: %s", named, epoch, brief(p))
			return false
		}
		notServing = time.Time{}
		if r.servedAt.IsZero() {
			r.servedAt = time.Now()
		}
		if !(p.Link == node.LinkConnected && p.Replication == "replicating" && p.PeerDisk == "uptodate" &&
			sok && s.Role == cluster.RoleSecondary && s.Epoch >= epoch) {
			last = fmt.Sprintf("%s serves; %s: %s; %s: %s", named, named, brief(p), other(named), brief(s))
			// A peer whose disk failed refuses the primary until the
			// runbook's attach-disk (attachDisks), not a split brain.
			peerDiskFailed := sok && s.Disk == cluster.DiskFailed
			if p.Link != node.LinkConnected && sok && !peerDiskFailed && !strings.Contains(p.LastError, "peer refused") {
				if unlinked.IsZero() {
					unlinked = time.Now()
				} else if time.Since(unlinked) > unlinkedGrace {
					if stuck = c.restartPeer(ctx, r, named, p.LastError, s); stuck != nil {
						return true
					}
					unlinked = time.Time{}
				}
			} else {
				unlinked = time.Time{}
			}
			if p.Link == node.LinkConnected || peerDiskFailed || !strings.Contains(p.LastError, "peer refused") {
				refused = time.Time{}
				return false
			}
			if refused.IsZero() {
				refused = time.Now()
			} else if time.Since(refused) > refusalGrace {
				if stuck = c.discardPeer(ctx, r, named, p.LastError); stuck != nil {
					return true
				}
				refused = time.Time{}
			}
			return false
		}
		r.final = named
		r.redundantAt = time.Now()
		return true
	})
	if err != nil {
		return fmt.Errorf("%w after %v; last: %s", err, time.Since(start).Round(time.Millisecond), last)
	}
	if stuck != nil {
		return stuck
	}
	if r.final != r.P && r.movedBy == "" {
		r.movedBy = "promote"
		if r.handOver {
			// docs/operations.md: the primary whose disk failed hands the
			// role to a peer that holds every acknowledged write.
			r.movedBy = "hand-over"
		}
	}
	return nil
}

// discardPeer is docs/operations.md's remedy for a peer the primary
// refuses (split brain, or "peer is the resync source"): keep the
// primary's data, stop the peer's daemon, `ldmirror resolve
// --discard-local` on it, start it again; the primary then copies the
// whole volume to it. The round fails: the runbook alone did not recover.
func (c *campaign) discardPeer(ctx context.Context, r *roundRun, primary, why string) error {
	peer := other(primary)
	r.refusals = append(r.refusals, fmt.Sprintf("%s refused %s for %v (%s): ran resolve --discard-local on %s", primary, peer, refusalGrace, why, peer))
	r.notef("runbook: %s refuses %s (%s); stopping %s, resolve --discard-local, restarting it", primary, peer, why, peer)
	if err := c.h.stop(ctx, peer); err != nil {
		return err
	}
	out, err := c.h.cli(ctx, 30*time.Second, "resolve", "--dir", c.h.dir[peer], "--discard-local")
	if err != nil {
		return err
	}
	r.notef("%s", strings.TrimSpace(out))
	return c.h.start(ctx, peer, r.n)
}

// restartPeer is what an operator tries when the primary stays without
// its peer although the peer's daemon runs and neither refuses it nor
// reports a failed disk: restart the peer's daemon (SIGTERM, start). The
// round fails: the runbook has no such step.
func (c *campaign) restartPeer(ctx context.Context, r *roundRun, primary, why string, st node.Status) error {
	peer := other(primary)
	r.restarts = append(r.restarts, fmt.Sprintf("%s stayed without its running peer %s for %v after the fault was undone (%s; %s: %s): restarted %s's daemon",
		primary, peer, unlinkedGrace, why, peer, brief(st), peer))
	r.notef("operator: %s stays without %s (%s; %s: %s); restarting %s's daemon", primary, peer, why, peer, brief(st), peer)
	if err := c.h.stop(ctx, peer); err != nil {
		return err
	}
	return c.h.start(ctx, peer, r.n)
}

// consistentState reads the control plane's state through the raft
// leader, from whichever data host answers.
func (c *campaign) consistentState(ctx context.Context) (clusterView, error) {
	var errs []error
	for _, h := range dataHosts() {
		out, err := c.h.cli(ctx, 10*time.Second, "cluster", "status", "--json", "--consistent", "--timeout", "3s", "--control", c.h.control(h))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var v clusterView
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			errs = append(errs, err)
			continue
		}
		return v, nil
	}
	return clusterView{}, fmt.Errorf("no consistent read of the control plane: %w", errors.Join(errs...))
}

// promoteUptodate is the runbook when no primary is named: promote the
// host the control plane records uptodate, the old primary first.
func (c *campaign) promoteUptodate(ctx context.Context, r *roundRun) {
	for _, h := range []string{r.P, r.S} {
		v, err := c.h.clusterStatus(ctx, h)
		if err != nil || v.Volume.Primary != "" {
			continue
		}
		for _, cand := range []string{r.P, r.S} {
			if v.disk(cand) != "uptodate" {
				continue
			}
			out, err := c.h.cli(ctx, 15*time.Second, "promote", cand, "--control", c.h.control(h), "--timeout", "5s")
			r.notef("runbook: no primary named; promote %s: %s %v", cand, strings.TrimSpace(out), err)
			if err == nil && cand != r.P {
				r.movedBy = "promote"
			}
			return
		}
		r.notef("runbook: no primary named and no uptodate host: %+v (only --force would promote)", v.Volume.Hosts)
		return
	}
}

// brief is the part of a status a stuck wait reports.
func brief(st node.Status) string {
	return fmt.Sprintf("{role %s epoch %d serving %d named %s link %s replication %q peer_disk %s dirty %d generations %s transition %q last_error %q}",
		st.Role, st.Epoch, st.ServingEpoch, st.NamedPrimary, st.Link, st.Replication, st.PeerDisk, st.DirtyBlocks, st.Generations, st.Transition, st.LastError)
}

// waitRedundant waits until primary serves with its peer uptodate.
func (c *campaign) waitRedundant(ctx context.Context, primary string, limit time.Duration) error {
	var last string
	err := waitFor(ctx, limit, primary+" to serve and its peer to be uptodate", func() bool {
		st, err := c.h.status(ctx, primary)
		if err != nil {
			last = err.Error()
			return false
		}
		last = brief(st)
		return st.Role == cluster.RolePrimary && st.Export != "" && st.Link == node.LinkConnected && st.PeerDisk == "uptodate"
	})
	if err != nil {
		return fmt.Errorf("%w; last: %s", err, last)
	}
	return nil
}

// quiesce waits until nothing is in flight and both hosts hold the same
// data by the daemons' account: connected, no dirty block, replicating,
// the peer uptodate and secondary in the same epoch; then, a little
// longer, for both to hold the same generations (docs/operations.md: "then
// both hosts hold the same generation"). Generations that stay different
// are reported, not waited for: the data may well be equal, and the byte
// comparison that follows says whether it is.
func (c *campaign) quiesce(ctx context.Context, primary string) (genNote string, err error) {
	var last string
	var p, s node.Status
	err = waitFor(ctx, quiesceLimit, "both hosts in sync", func() bool {
		var err error
		if p, err = c.h.status(ctx, primary); err != nil {
			last = err.Error()
			return false
		}
		if s, err = c.h.status(ctx, other(primary)); err != nil {
			last = err.Error()
			return false
		}
		last = fmt.Sprintf("%s %s; %s %s", primary, brief(p), other(primary), brief(s))
		return p.Role == cluster.RolePrimary && p.NamedPrimary == primary && p.ServingEpoch == p.Epoch &&
			p.Link == node.LinkConnected && p.DirtyBlocks == 0 && p.Replication == "replicating" &&
			p.PeerDisk == "uptodate" && s.Role == cluster.RoleSecondary && s.Epoch == p.Epoch
	})
	if err != nil {
		return "", fmt.Errorf("%w; last: %s", err, last)
	}
	if err := waitFor(ctx, 5*time.Second, "both hosts to hold the same generations", func() bool {
		var perr, serr error
		p, perr = c.h.status(ctx, primary)
		s, serr = c.h.status(ctx, other(primary))
		return perr == nil && serr == nil && p.Generations == s.Generations
	}); err != nil {
		return fmt.Sprintf("in sync (connected, nothing dirty, peer uptodate) but the generations differ: %s %s, %s %s",
			primary, p.Generations, other(primary), s.Generations), nil
	}
	return "", nil
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
