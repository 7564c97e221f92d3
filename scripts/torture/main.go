// Command torture is issue 17's fault campaign: it runs the witness and two
// ldmirror daemons on network namespaces (a, b, w), writes self-checking
// records through the primary (raw O_DIRECT|O_DSYNC writes to the export,
// and files on ext4 over it), breaks something every round (kill -9,
// partitions, a pulled cable, SIGSTOP, swap), recovers as an operator
// following docs/cluster.md's runbooks, and checks that no acknowledged
// write was lost (async: only a suffix within docs/journal.md's bound),
// that ext4 is clean, that both backing files are byte-identical, and
// that no two hosts served as primary in one epoch.
//
//	go run ./scripts/torture --rounds 20 [--mode async] [--seed S [--replay]]
//
// It must run as root. See docs/reliability.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/ldmirror/ldmirror/internal/netns"
)

// options are the command line.
type options struct {
	rounds      int
	seed        uint64
	seedSet     bool
	replay      bool
	mode        string
	recovery    string
	dir         string
	size        int64 // bytes
	headroom    int64 // bytes of each data host's file system beyond the volume
	journalSize string
	rawRate     int
	ldapRate    int
	keep        bool
	daemonArgs  listFlag
	only        []string // --kinds: the fault kinds to play, all if empty
}

// defaultHeadroomMiB leaves room on a data host's file system for a
// protected resync of the whole 128 MiB volume's worth of blocks, which a
// kill of every process can leave out of sync (docs/operations.md, "The
// source died during a resync"): with less, the target refuses to stage it
// and the runbook has no step but --unsafe-inconsistent.
const defaultHeadroomMiB = 192

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, " ") }

func (l *listFlag) Set(v string) error {
	*l = append(*l, v)
	return nil
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("torture", flag.ContinueOnError)
	fs.IntVar(&o.rounds, "rounds", 20, "rounds to play, one fault each")
	seed := fs.String("seed", "", "seed of the fault schedule (default: from the clock; printed at start)")
	fs.BoolVar(&o.replay, "replay", false, "play --seed's schedule again and stop at the first round that fails, printing the schedule first")
	fs.StringVar(&o.mode, "mode", "sync", "replication mode of both daemons: sync or async")
	fs.StringVar(&o.recovery, "recovery", "runbook", "who recovers: runbook (the operator of docs/cluster.md); agent is not implemented")
	fs.StringVar(&o.dir, "dir", "/var/tmp/ldmirror-torture", "`DIR` under which each campaign gets a directory of its own")
	sizeMiB := fs.Int("size-mib", 128, "volume size in MiB (ext4 on the first 3/4, raw records on the rest but the last MiB, the growth region)")
	headroomMiB := fs.Int("disk-headroom-mib", defaultHeadroomMiB, "each data host's file system (a tmpfs) is this much larger than the volume: room for its metadata, raft log and journal, and for a resync's staging area (up to the blocks out of sync, which after a primary's crash are its activity log's hot extents), all of which a disk-full round takes")
	fs.StringVar(&o.journalSize, "journal-size", "8MiB", "async: the journal size (small, so that catch-up and overflow both happen)")
	fs.IntVar(&o.rawRate, "raw-rate", 1000, "writes per second of the raw writer (0: as fast as it can)")
	fs.IntVar(&o.ldapRate, "ldap-rate", 20, "LDAP adds per second through the retrier proxy to slapd on the primary (0: no directory, no slapd)")
	fs.Var(&o.daemonArgs, "daemon-arg", "one more flag for both daemons, repeatable; e.g. --daemon-arg=--activity-log=false (unsafe) shows that the checker catches a divergence")
	fs.BoolVar(&o.keep, "keep", false, "keep the volumes after a campaign without failures (the logs are always kept)")
	kinds := fs.String("kinds", "", "`KIND,...`: play only these kinds of fault (default: all; see docs/reliability.md, \"The faults\")")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *kinds != "" {
		for _, k := range strings.Split(*kinds, ",") {
			if kindOf(k).action == "" {
				return o, fmt.Errorf("--kinds: no fault kind %q", k)
			}
			o.only = append(o.only, k)
		}
	}
	if *seed != "" {
		if _, err := fmt.Sscan(*seed, &o.seed); err != nil {
			return o, fmt.Errorf("--seed %q: want an unsigned integer", *seed)
		}
		o.seedSet = true
	} else {
		o.seed = uint64(time.Now().UnixNano()) % 1_000_000_000
	}
	switch {
	case o.replay && !o.seedSet:
		return o, errors.New("--replay needs the --seed of the campaign to replay")
	case o.rounds < 1:
		return o, errors.New("--rounds must be at least 1")
	case o.mode != "sync" && o.mode != "async":
		return o, fmt.Errorf("--mode %q: want sync or async", o.mode)
	case o.recovery == "agent":
		return o, errors.New("--recovery agent is not implemented; only runbook (docs/reliability.md)")
	case o.recovery != "runbook":
		return o, fmt.Errorf("--recovery %q: want runbook", o.recovery)
	case *sizeMiB < 32 || *sizeMiB%4 != 0:
		return o, fmt.Errorf("--size-mib %d: want a multiple of 4, at least 32", *sizeMiB)
	}
	if o.ldapRate < 0 {
		return o, fmt.Errorf("--ldap-rate %d: want 0 (none) or more", o.ldapRate)
	}
	if *headroomMiB < 16 {
		return o, fmt.Errorf("--disk-headroom-mib %d: want at least 16 (the metadata, the raft log, an async journal)", *headroomMiB)
	}
	o.size, o.headroom = int64(*sizeMiB)<<20, int64(*headroomMiB)<<20
	return o, nil
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == helperArg {
		os.Exit(rawHelperMain(os.Args[2:]))
	}
	os.Exit(realMain())
}

// Exit codes.
const (
	exitPass     = 0
	exitFindings = 1 // the checker found lost writes, divergence, fsck errors or split brain
	exitAborted  = 2 // the campaign could not run or could not go on
	exitSignal   = 130
)

func realMain() int {
	opt, err := parseFlags(os.Args[1:])
	if errors.Is(err, flag.ErrHelp) {
		return exitPass
	}
	if err == nil {
		err = preflightRoot(opt)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "torture: %v\n", err)
		return exitAborted
	}
	// A closed terminal or pipe must not kill the runner before its
	// cleanups: the lab's daemons, mounts and loop devices would stay.
	signal.Ignore(syscall.SIGPIPE)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()

	c, closeLogs, err := newCampaign(opt)
	if err != nil {
		fmt.Fprintf(os.Stderr, "torture: %v\n", err)
		return exitAborted
	}
	defer closeLogs()
	sched, commit := c.plan()
	start := time.Now()
	runErr := c.run(ctx, sched)
	c.keepVolumes = opt.keep || runErr != nil || slices.ContainsFunc(c.results, (*roundResult).failed)
	c.cleanup()

	s := summarize(c.results)
	s.Seed, s.Mode, s.Commit, s.Planned, s.Elapsed = opt.seed, opt.mode, commit, opt.rounds, time.Since(start)
	code := c.report(s)
	switch {
	case runErr == nil:
	case ctx.Err() != nil:
		c.logf("interrupted: %v", runErr)
		return exitSignal
	default:
		c.logf("campaign aborted: %v (seed %d; replay: %s)", runErr, opt.seed, replayCommand(opt, max(len(c.results), 1)))
		var a abort
		if errors.As(runErr, &a) && a.skip {
			return exitAborted
		}
		if code == exitPass {
			code = exitAborted
		}
	}
	if code == exitPass && !opt.keep {
		if err := os.RemoveAll(filepath.Join(c.root, "vol")); err != nil {
			c.logf("remove the volumes: %v", err)
		}
	}
	c.logf("logs kept in %s", c.logs)
	return code
}

// preflightRoot checks what the campaign needs before it changes anything.
func preflightRoot(opt options) error {
	if uid := os.Geteuid(); uid != 0 {
		return fmt.Errorf("must run as root (euid %d): it creates network namespaces, nftables rules, FUSE mounts, loop devices and ext4 mounts", uid)
	}
	return preflight(opt)
}

// newCampaign makes the campaign's directories, its log and its ledger;
// closeLogs closes the last two.
func newCampaign(opt options) (c *campaign, closeLogs func(), err error) {
	root := filepath.Join(opt.dir, fmt.Sprintf("%s-%s-seed%d", time.Now().Format("20060102-150405"), opt.mode, opt.seed))
	logs := filepath.Join(root, "logs")
	for _, d := range []string{logs, filepath.Join(root, "mnt")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, nil, err
		}
	}
	logFile, err := os.Create(filepath.Join(logs, "campaign.log"))
	if err != nil {
		return nil, nil, err
	}
	c = &campaign{opt: opt, root: root, logs: logs, mnt: filepath.Join(root, "mnt"), logw: tee{logFile, os.Stdout}}
	c.o = &owner{logf: c.logf}
	if c.ledger, err = openLedger(filepath.Join(logs, "ledger.tsv.gz")); err != nil {
		logFile.Close()
		return nil, nil, err
	}
	return c, func() { c.ledger.Close(); logFile.Close() }, nil
}

// plan draws the schedule of the seed, logs it and saves it with the logs.
func (c *campaign) plan() (sched []faultSpec, commit string) {
	opt := c.opt
	only := opt.only
	if opt.ldapRate == 0 && len(only) == 0 {
		// No directory server to kill.
		for _, k := range repertoire() {
			if k.action != "slapd" {
				only = append(only, k.name)
			}
		}
	}
	sched = schedule(opt.seed, opt.rounds, opt.mode, only)
	commit = gitCommit()
	c.logf("ldmirror torture: seed %d, mode %s, %d rounds, recovery %s, commit %s, load average %s",
		opt.seed, opt.mode, opt.rounds, opt.recovery, commit, loadAverage())
	if len(opt.daemonArgs) > 0 {
		c.logf("extra daemon flags: %s", opt.daemonArgs.String())
	}
	c.logf("logs: %s", c.logs)
	var sb strings.Builder
	for _, f := range sched {
		fmt.Fprintln(&sb, f)
	}
	_ = os.WriteFile(filepath.Join(c.logs, "schedule.txt"), []byte(sb.String()), 0o644)
	if opt.replay {
		c.logf("replaying the schedule of seed %d:\n%s", opt.seed, sb.String())
	}
	return sched, commit
}

// cleanup undoes the lab and waits for the writers, whose writes all
// return once the daemons are gone.
func (c *campaign) cleanup() {
	c.o.runCleanups()
	if c.wl != nil {
		wctx, cancel := context.WithTimeout(context.Background(), writerLimit)
		if err := c.wl.Close(wctx); err != nil {
			c.logf("cleanup: %v", err)
		}
		cancel()
	}
	for _, e := range c.o.errors() {
		c.logf("cleanup: %s", e)
	}
}

// report logs and saves the summary, lists the failed rounds with the
// command that replays them, and returns the exit code the findings call for.
func (c *campaign) report(s summary) int {
	var table strings.Builder
	s.write(&table, c.opt.mode)
	c.logf("summary:\n%s", table.String())
	_ = os.WriteFile(filepath.Join(c.logs, "summary.md"), []byte(table.String()), 0o644)
	if len(s.FailedRounds) == 0 {
		return exitPass
	}
	c.logf("FAILED rounds %v. Replay: %s", s.FailedRounds, replayCommand(c.opt, s.FailedRounds[len(s.FailedRounds)-1]))
	for _, r := range c.results {
		if !r.failed() {
			continue
		}
		c.logf("  %s (primary %s -> %s)", r.Spec, r.P, r.Final)
		for _, f := range r.Failures {
			c.logf("    %s", f)
		}
		c.logf("    logs: %s", filepath.Join(c.logs, "rounds", fmt.Sprintf("%03d", r.N)))
	}
	return exitFindings
}

// run sets up and plays the rounds. A lab failure (the owner's Fatalf) ends
// it like an error.
func (c *campaign) run(ctx context.Context, sched []faultSpec) (err error) {
	defer func() {
		if v := recover(); v != nil {
			a, ok := v.(abort)
			if !ok {
				c.o.runCleanups()
				panic(v)
			}
			err = a
		}
	}()
	if err := c.setup(ctx); err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	for _, spec := range sched {
		if err := ctx.Err(); err != nil {
			return err
		}
		res, err := c.runRound(ctx, spec)
		c.results = append(c.results, res)
		c.logf("%s", res.line())
		for _, f := range res.Failures {
			c.logf("round %d: FAILURE: %s", res.N, f)
		}
		if err != nil {
			return fmt.Errorf("round %d: %w", spec.Round, err)
		}
		if c.opt.replay && res.failed() {
			c.logf("replay: stopping at the first failed round, %d", res.N)
			return nil
		}
	}
	return nil
}

// tee writes to a file and, as far as it can, to a terminal: unlike
// io.MultiWriter it goes on writing the log when stdout is gone.
type tee struct {
	log  io.Writer
	term io.Writer
}

func (t tee) Write(b []byte) (int, error) {
	_, _ = t.term.Write(b)
	return t.log.Write(b)
}

// replayCommand is the command line that plays the same schedule up to
// round rounds again.
func replayCommand(opt options, rounds int) string {
	cmd := fmt.Sprintf("go run ./scripts/torture --seed %d --mode %s --rounds %d --replay", opt.seed, opt.mode, rounds)
	if opt.rawRate != 1000 {
		cmd += fmt.Sprintf(" --raw-rate %d", opt.rawRate)
	}
	if opt.ldapRate != 20 {
		cmd += fmt.Sprintf(" --ldap-rate %d", opt.ldapRate)
	}
	if opt.size != 128<<20 {
		cmd += fmt.Sprintf(" --size-mib %d", opt.size>>20)
	}
	if opt.headroom != defaultHeadroomMiB<<20 {
		cmd += fmt.Sprintf(" --disk-headroom-mib %d", opt.headroom>>20)
	}
	if opt.mode == "async" && opt.journalSize != "8MiB" {
		cmd += " --journal-size " + opt.journalSize
	}
	if len(opt.only) > 0 {
		cmd += " --kinds " + strings.Join(opt.only, ",")
	}
	for _, a := range opt.daemonArgs {
		cmd += " --daemon-arg=" + a
	}
	return cmd
}

// preflight checks the tools the campaign runs.
func preflight(opt options) error {
	if opt.ldapRate > 0 {
		for _, tool := range []string{slapdBin, "slapadd", "slapcat"} {
			if _, err := exec.LookPath(tool); err != nil {
				return fmt.Errorf("needs %s for the directory's writer (apt-get install slapd ldap-utils), or --ldap-rate 0: %w", tool, err)
			}
		}
	}
	if err := netns.Available(); err != nil {
		return err
	}
	for _, tool := range []string{"nsenter", "mkfs.ext4", "e2fsck", "mount", "umount", "fallocate", "cp"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("needs %s: %w", tool, err)
		}
	}
	for _, p := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("needs %s: %w", p, err)
		}
	}
	return nil
}

// gitCommit names the commit the campaign runs, "-dirty" if the work tree
// has changes.
func gitCommit() string {
	out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	c := strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil && len(st) > 0 {
		c += "-dirty"
	}
	return c
}

// loadAverage is the machine's 1, 5 and 15 minute load: other work on a
// shared machine changes the timings.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
