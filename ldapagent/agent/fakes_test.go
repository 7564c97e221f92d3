package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/internal/logbuf"
	"github.com/ldmirror/ldmirror/ldapagent/probe"
)

// fakeCP is an in-memory control plane with the FSM's rules for the
// commands the agent sends.
type fakeCP struct {
	mu        sync.Mutex
	st        cluster.VolumeState
	watchers  map[chan cluster.VolumeState]struct{}
	failovers []string // "failed@epoch" of every Failover call
	reports   []string // "node ready detail" of every ReportReady call
	// failoverErr, if set, is returned by Failover instead of acting.
	failoverErr error
}

// newFakeCP: data hosts a and b, both uptodate, witness w, primary in
// epoch 1.
func newFakeCP(primary string) *fakeCP {
	return &fakeCP{
		st: cluster.VolumeState{Primary: primary, Epoch: 1, Hosts: []cluster.HostState{
			{ID: "a", Disk: cluster.DiskUpToDate},
			{ID: "b", Disk: cluster.DiskUpToDate},
			{ID: "w", Witness: true, Disk: cluster.DiskDiskless},
		}},
		watchers: map[chan cluster.VolumeState]struct{}{},
	}
}

func (f *fakeCP) cloneLocked() cluster.VolumeState {
	s := f.st
	s.Hosts = slices.Clone(f.st.Hosts)
	return s
}

func (f *fakeCP) State() cluster.VolumeState {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cloneLocked()
}

func (f *fakeCP) Watch(ctx context.Context) <-chan cluster.VolumeState {
	ch := make(chan cluster.VolumeState, 1)
	f.mu.Lock()
	defer f.mu.Unlock()
	ch <- f.cloneLocked()
	f.watchers[ch] = struct{}{}
	context.AfterFunc(ctx, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		delete(f.watchers, ch)
		close(ch)
	})
	return ch
}

// notifyLocked gives every watcher the newest state, dropping one it has
// not read, as the cluster's watch does.
func (f *fakeCP) notifyLocked() {
	for ch := range f.watchers {
		select {
		case <-ch:
		default:
		}
		ch <- f.cloneLocked()
	}
}

func (f *fakeCP) host(id string) *cluster.HostState {
	for i := range f.st.Hosts {
		if f.st.Hosts[i].ID == id {
			return &f.st.Hosts[i]
		}
	}
	panic("no host " + id)
}

func (f *fakeCP) Failover(ctx context.Context, failed string, epoch cluster.Epoch) (string, cluster.Epoch, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failovers = append(f.failovers, fmt.Sprintf("%s@%d", failed, epoch))
	if f.failoverErr != nil {
		return "", f.st.Epoch, f.failoverErr
	}
	if epoch != f.st.Epoch {
		return "", f.st.Epoch, cluster.ErrStaleEpoch
	}
	if failed != f.st.Primary {
		return "", f.st.Epoch, cluster.ErrNotPrimary
	}
	for _, h := range f.st.Hosts {
		if h.ID != failed && !h.Witness && h.Disk == cluster.DiskUpToDate {
			f.st.Primary = h.ID
			f.st.Epoch++
			if failed != "" {
				f.host(failed).Disk = cluster.DiskOutdated
			}
			f.notifyLocked()
			return h.ID, f.st.Epoch, nil
		}
	}
	return "", f.st.Epoch, cluster.ErrNotUpToDate
}

func (f *fakeCP) ReportReady(ctx context.Context, node string, ready bool, detail string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reports = append(f.reports, fmt.Sprintf("%s %t %s", node, ready, detail))
	h := f.host(node)
	if h.ReadySince.IsZero() || h.Ready != ready {
		h.ReadySince = time.Now()
	}
	h.Ready, h.ReadyDetail = ready, detail
	f.notifyLocked()
	return nil
}

// set changes the state as a command from elsewhere would.
func (f *fakeCP) set(change func(s *cluster.VolumeState)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	change(&f.st)
	f.notifyLocked()
}

// promote makes node primary in a new epoch (an operator's promote).
func (f *fakeCP) promote(node string) {
	f.set(func(s *cluster.VolumeState) { s.Primary = node; s.Epoch++ })
}

func (f *fakeCP) setDisk(node string, d cluster.DiskState) {
	f.set(func(*cluster.VolumeState) { f.host(node).Disk = d })
}

func (f *fakeCP) setReady(node string, ready bool, detail string) {
	f.set(func(*cluster.VolumeState) {
		h := f.host(node)
		h.Ready, h.ReadyDetail, h.ReadySince = ready, detail, time.Now()
	})
}

func (f *fakeCP) failoverCalls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.failovers)
}

func (f *fakeCP) reportsOf(node string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, r := range f.reports {
		if strings.HasPrefix(r, node+" ") {
			out = append(out, r)
		}
	}
	return out
}

// fakeVolume is a host's ldmirror node: primary as soon as the control
// plane says so; Swap transfers the role in the fake control plane and
// notes it in the hook log, so its order against the hooks shows.
type fakeVolume struct {
	cp      *fakeCP
	node    string
	export  string
	hookLog string

	mu       sync.Mutex
	swapErr  error
	awaitErr error
}

func (v *fakeVolume) AwaitPrimary(ctx context.Context, e cluster.Epoch) (string, error) {
	v.mu.Lock()
	err := v.awaitErr
	v.mu.Unlock()
	if err != nil {
		return "", err
	}
	for st := range v.cp.Watch(ctx) {
		if st.Holds(v.node, e) {
			return v.export, nil
		}
	}
	return "", ctx.Err()
}

func (v *fakeVolume) Swap(ctx context.Context) (cluster.Epoch, error) {
	appendLine(v.hookLog, v.node+" volume swap")
	v.mu.Lock()
	err := v.swapErr
	v.mu.Unlock()
	if err != nil {
		return 0, err
	}
	f := v.cp
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.st.Primary != v.node {
		return 0, cluster.ErrNotPrimary
	}
	for _, h := range f.st.Hosts {
		if h.ID != v.node && !h.Witness {
			if h.Disk != cluster.DiskUpToDate {
				return 0, cluster.ErrNotUpToDate
			}
			f.st.Primary = h.ID
			f.st.Epoch++
			f.notifyLocked()
			return f.st.Epoch, nil
		}
	}
	return 0, errors.New("no peer")
}

func (v *fakeVolume) setSwapErr(err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.swapErr = err
}

func appendLine(path, line string) {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		panic(err)
	}
	defer f.Close()
	fmt.Fprintln(f, line)
}

// autoProbe answers at once: down for the URLs marked down, up otherwise.
type autoProbe struct {
	mu   sync.Mutex
	down map[string]bool
}

func newAutoProbe() *autoProbe { return &autoProbe{down: map[string]bool{}} }

func (p *autoProbe) set(url string, down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down[url] = down
}

func (p *autoProbe) Check(ctx context.Context, cfg probe.Config) probe.Result {
	p.mu.Lock()
	down := p.down[cfg.URL]
	p.mu.Unlock()
	r := probe.Result{At: time.Now(), Latency: time.Millisecond}
	if down {
		r.Err = &probe.StepError{Step: probe.StepConnect, Err: errors.New("connection refused")}
	}
	return r
}

// stepProbe hands every probe to the test, which answers it: the agent has
// acted on an answer by the time the next call arrives.
type stepProbe struct {
	calls chan stepCall
}

type stepCall struct {
	url   string
	reply chan probe.Result
}

func (p *stepProbe) Check(ctx context.Context, cfg probe.Config) probe.Result {
	c := stepCall{url: cfg.URL, reply: make(chan probe.Result, 1)}
	select {
	case p.calls <- c:
	case <-ctx.Done():
		return probe.Result{Err: ctx.Err()}
	}
	select {
	case r := <-c.reply:
		return r
	case <-ctx.Done():
		return probe.Result{Err: ctx.Err()}
	}
}

// next waits for the agent's next probe of url (answering probes of other
// URLs as up, as a target change can leave one in flight).
func (p *stepProbe) next(t *testing.T, url string) stepCall {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case c := <-p.calls:
			if c.url == url {
				return c
			}
			c.reply <- probe.Result{At: time.Now()}
		case <-deadline:
			t.Fatalf("no probe of %s within 10 s", url)
		}
	}
}

func (p *stepProbe) answer(t *testing.T, url string, up bool) {
	t.Helper()
	c := p.next(t, url)
	r := probe.Result{At: time.Now(), Latency: time.Millisecond}
	if !up {
		r.Err = &probe.StepError{Step: probe.StepConnect, Err: errors.New("connection refused")}
	}
	c.reply <- r
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// Test timings: probes every 5 ms; the anti-flap and failback timers run
// on the fake clock, which only the test moves.
const (
	testMinSwap       = time.Minute
	testFailbackAfter = 5 * time.Minute
	testReadyInterval = 30 * time.Second
)

// hookCmd is every test hook: it fails if the file fail-<hook> exists in
// the host's directory (LDMIRROR_DIR), and otherwise appends a line with
// its environment to the shared hook log.
func hookCmd(log string) string {
	return `if [ -e "$LDMIRROR_DIR/fail-$LDMIRROR_HOOK" ]; then echo "$LDMIRROR_HOOK: simulated failure" >&2; exit 1; fi; ` +
		`echo "$LDMIRROR_NODE $LDMIRROR_SEQUENCE $LDMIRROR_HOOK $LDMIRROR_EPOCH $LDMIRROR_ROLE $LDMIRROR_EXPORT" >> '` + log + `'`
}

// testHost is one data host's agent with its fakes.
type testHost struct {
	id   string
	dir  string
	a    *Agent
	vol  *fakeVolume
	logs *logbuf.Buffer
}

type env struct {
	t       *testing.T
	cp      *fakeCP
	clock   *fakeClock
	hookLog string
}

func newEnv(t *testing.T, primary string) *env {
	return &env{t: t, cp: newFakeCP(primary), clock: newFakeClock(), hookLog: filepath.Join(t.TempDir(), "hooks.log")}
}

func (e *env) config(id string) Config {
	peer := "b"
	if id == "b" {
		peer = "a"
	}
	hooks := func(names ...string) []Hook {
		var hs []Hook
		for _, n := range names {
			hs = append(hs, Hook{Name: n, Command: hookCmd(e.hookLog), Timeout: 10 * time.Second})
		}
		return hs
	}
	return Config{
		PeerURL: "ldap://" + peer, LocalURL: "ldap://" + id,
		Interval: 5 * time.Millisecond, Timeout: time.Second, Threshold: 3,
		MinSwapInterval: testMinSwap, FailbackAfter: testFailbackAfter, ReadyInterval: testReadyInterval,
		ReadyCheck: &Hook{Command: `test ! -e "$LDMIRROR_DIR/not-ready" || { echo "slaptest: config broken"; exit 1; }`},
		Promote:    hooks("attach", "mount", "start-slapd"),
		Demote:     hooks("stop-slapd", "umount", "detach"),
	}
}

// start runs an agent for id, with cfg changed by tweak, probing through
// check.
func (e *env) start(id string, check CheckFunc, tweak func(*Config)) *testHost {
	t := e.t
	t.Helper()
	cfg := e.config(id)
	if tweak != nil {
		tweak(&cfg)
	}
	h := &testHost{id: id, dir: t.TempDir(), logs: &logbuf.Buffer{}}
	h.vol = &fakeVolume{cp: e.cp, node: id, export: "/export/" + id, hookLog: e.hookLog}
	logger := slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if os.Getenv("LDMIRROR_TEST_LOG") != "" {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", id)
	}
	a, err := New(cfg, Deps{NodeID: id, Dir: h.dir, Export: "/export/" + id, ControlPlane: e.cp, Volume: h.vol, Logger: logger, Check: check, Now: e.clock.Now})
	if err != nil {
		t.Fatalf("start agent %s: %v", id, err)
	}
	h.a = a
	t.Cleanup(func() { a.Close() })
	return h
}

// touch creates (or with remove, deletes) a control file in the host's
// directory: fail-<hook> or not-ready.
func (h *testHost) touch(t *testing.T, name string, remove bool) {
	t.Helper()
	p := filepath.Join(h.dir, name)
	var err error
	if remove {
		err = os.Remove(p)
	} else {
		err = os.WriteFile(p, nil, 0o644)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// waitStatus waits until the agent's status satisfies cond and returns it.
func (h *testHost) waitStatus(t *testing.T, what string, cond func(Status) bool) Status {
	t.Helper()
	var s Status
	deadline := time.Now().Add(10 * time.Second)
	for s = h.a.Status(); !cond(s); s = h.a.Status() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: timed out waiting for %s; status %+v", h.id, what, s)
		}
		time.Sleep(2 * time.Millisecond)
	}
	return s
}

func (h *testHost) waitState(t *testing.T, state string) Status {
	t.Helper()
	return h.waitStatus(t, "state "+state, func(s Status) bool { return s.State == state })
}

// hookLines returns the hook log.
func (e *env) hookLines() []string {
	b, err := os.ReadFile(e.hookLog)
	if err != nil && !os.IsNotExist(err) {
		e.t.Fatal(err)
	}
	var lines []string
	for l := range strings.Lines(string(b)) {
		lines = append(lines, strings.ReplaceAll(strings.TrimSuffix(l, "\n"), " ", "_"))
	}
	return lines
}

// waitHooks waits until the hook log, from line from on, holds want in
// order (other lines may come between), and returns the index of the line
// after the last one matched. Lines are written with '_' for spaces.
func (e *env) waitHooks(from int, want ...string) int {
	e.t.Helper()
	var lines []string
	end := from
	match := func() bool {
		lines = e.hookLines()
		i := 0
		for j := from; j < len(lines) && i < len(want); j++ {
			if lines[j] == want[i] {
				i++
				end = j + 1
			}
		}
		return i == len(want)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !match() {
		if time.Now().After(deadline) {
			e.t.Fatalf("hook log from line %d does not hold %q in order:\n%s", from, want, strings.Join(lines, "\n"))
		}
		time.Sleep(2 * time.Millisecond)
	}
	return end
}

// seq is the hook log lines of a whole sequence on node.
func seq(node, sequence string, epoch cluster.Epoch, role cluster.Role, export string, hooks ...string) []string {
	var out []string
	for _, h := range hooks {
		out = append(out, fmt.Sprintf("%s_%s_%s_%d_%s_%s", node, sequence, h, epoch, role, export))
	}
	return out
}

func promoteSeq(node string, epoch cluster.Epoch) []string {
	return seq(node, SeqPromote, epoch, cluster.RolePrimary, "/export/"+node, "attach", "mount", "start-slapd")
}

func demoteSeq(node string, epoch cluster.Epoch) []string {
	return seq(node, SeqDemote, epoch, cluster.RoleSecondary, "/export/"+node, "stop-slapd", "umount", "detach")
}
