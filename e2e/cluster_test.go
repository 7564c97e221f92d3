package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/internal/poll"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/internal/netns"
	"go.etcd.io/bbolt"
)

// The control plane on three network namespaces: data hosts a and b run
// `ldmirror cluster member` (a raft member that registers as a data host,
// without the data path), w runs `ldmirror witness`. Faults are the lab's:
// links down, nftables partitions, kill -9.

const (
	clusterPort = "7400"
	// raftTimeout keeps elections short (a dead leader is replaced in about
	// 2x this) without flapping on a loaded 2-core machine.
	raftTimeout = "500ms"
)

// clusterStatusJSON is what `ldmirror cluster status --json` prints.
type clusterStatusJSON struct {
	NodeID    string              `json:"node_id"`
	RaftState string              `json:"raft_state"`
	Leader    string              `json:"leader"`
	Volume    cluster.VolumeState `json:"volume"`
	Members   []cluster.Member    `json:"members"`
}

// raftMember is one member process in the lab.
type raftMember struct {
	host string
	dir  string
	args []string
	log  *os.File
	cmd  *exec.Cmd
	done chan struct{}
}

type clusterLab struct {
	t       *testing.T
	lab     *netns.Lab
	creds   string // pki directory (issueCerts)
	members map[string]*raftMember
}

// newClusterLab starts a (bootstrapping), then b and w joining through a,
// each with the member flags extra too, and waits until every member sees
// three registered voters and a leader.
func newClusterLab(t *testing.T, extra ...string) *clusterLab {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test; skipped with -short")
	}
	lab := netns.NewLab(t, "a", "b", "w")
	root := t.TempDir()
	creds := issueCerts(t, root)
	cl := &clusterLab{t: t, lab: lab, creds: creds, members: map[string]*raftMember{}}
	for _, h := range []string{"a", "b", "w"} {
		args := []string{"cluster", "member"}
		if h == "w" {
			args = []string{"witness"}
		}
		args = append(args, "--data-dir", filepath.Join(root, h), "--node-id", h,
			"--bind", lab.Addr(h)+":"+clusterPort, "--tls-dir", creds, "--raft-timeout", raftTimeout)
		args = append(args, extra...)
		if h == "a" {
			args = append(args, "--bootstrap")
		} else {
			args = append(args, "--join", lab.Addr("a")+":"+clusterPort)
		}
		m := &raftMember{host: h, dir: filepath.Join(root, h), args: args}
		if err := os.MkdirAll(m.dir, 0o700); err != nil {
			t.Fatal(err)
		}
		logf, err := os.OpenFile(filepath.Join(root, h+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		m.log = logf
		cl.members[h] = m
		t.Cleanup(func() {
			cl.kill(h)
			if t.Failed() {
				b, _ := os.ReadFile(logf.Name())
				t.Logf("log of member %s:\n%s", h, b)
			}
			logf.Close()
		})
		cl.start(h)
	}
	cl.waitFormed(30 * time.Second)
	return cl
}

// start runs host's member with the arguments it was first started with.
func (cl *clusterLab) start(host string) {
	cl.t.Helper()
	m := cl.members[host]
	m.cmd = cl.lab.Command(host, binary, m.args...)
	m.cmd.Stdout, m.cmd.Stderr = m.log, m.log
	if err := m.cmd.Start(); err != nil {
		cl.t.Fatal(err)
	}
	m.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(m.cmd, m.done)
	poll.Until(cl.t, 10*time.Second, "member "+host+" to answer on its control socket", func() bool {
		_, err := cl.status(host)
		return err == nil
	})
}

// kill sends SIGKILL to host's member and waits for it to exit.
func (cl *clusterLab) kill(host string) {
	m := cl.members[host]
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Kill()
	<-m.done
	m.cmd = nil
}

// ctl runs an ldmirror command against host's control socket and returns
// its stdout, or an error with its stderr.
func (cl *clusterLab) ctl(host string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append(os.Environ(), "LDMIRROR_CLUSTER_CONTROL="+filepath.Join(cl.members[host].dir, "control.sock"))
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("ldmirror %s on %s: %w: %s", strings.Join(args, " "), host, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// mustCtl is ctl that fails the test on error.
func (cl *clusterLab) mustCtl(host string, args ...string) string {
	cl.t.Helper()
	out, err := cl.ctl(host, args...)
	if err != nil {
		cl.t.Fatal(err)
	}
	return out
}

func (cl *clusterLab) status(host string) (clusterStatusJSON, error) {
	var st clusterStatusJSON
	out, err := cl.ctl(host, "cluster", "status", "--json", "--timeout", "2s")
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal([]byte(out), &st)
}

// waitFormed waits until every member knows three voters, all registered,
// and the same leader.
func (cl *clusterLab) waitFormed(limit time.Duration) {
	cl.t.Helper()
	poll.Until(cl.t, limit, "three registered voters with one leader on every member", func() bool {
		leader := ""
		for _, h := range []string{"a", "b", "w"} {
			st, err := cl.status(h)
			if err != nil || st.Leader == "" || (leader != "" && st.Leader != leader) || len(st.Volume.Hosts) != 3 {
				return false
			}
			leader = st.Leader
			voters := 0
			for _, m := range st.Members {
				if m.Voter {
					voters++
				}
			}
			if voters != 3 {
				return false
			}
		}
		return true
	})
}

// waitState waits until host's own copy of the state satisfies ok.
func (cl *clusterLab) waitState(host string, limit time.Duration, what string, ok func(cluster.VolumeState) bool) cluster.VolumeState {
	cl.t.Helper()
	var st clusterStatusJSON
	poll.Until(cl.t, limit, what+" on "+host, func() bool {
		var err error
		st, err = cl.status(host)
		return err == nil && ok(st.Volume)
	})
	return st.Volume
}

// promoteInitial makes a primary in epoch 1: a fresh data host is
// inconsistent, so the first promotion is forced (the daemon will mark a
// freshly initialised volume uptodate instead, once it embeds a member).
func (cl *clusterLab) promoteInitial() {
	cl.t.Helper()
	if _, err := cl.ctl("b", "promote", "a"); err == nil || !strings.Contains(err.Error(), cluster.ErrNotUpToDate.Error()) {
		cl.t.Fatalf("promoting inconsistent a without --force: got %v, want %q", err, cluster.ErrNotUpToDate)
	}
	out := cl.mustCtl("b", "promote", "a", "--force", "--reason", "initial sync")
	if want := "a is primary in epoch 1 (forced)"; strings.TrimSpace(out) != want {
		cl.t.Fatalf("promote printed %q, want %q", out, want)
	}
}

// TestClusterBootstrapJoin: a bootstraps, b and w join; status shows three
// voters, a leader and the roles; a forced promotion of a opens epoch 1 and
// is shown in status on every member; a host with a certificate of another
// CA is refused and its member exits saying so, and so is one whose
// certificate names another node than it claims to be.
func TestClusterBootstrapJoin(t *testing.T) {
	cl := newClusterLab(t)
	st, err := cl.status("w")
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range st.Volume.Hosts {
		want := map[string]cluster.DiskState{"a": cluster.DiskInconsistent, "b": cluster.DiskInconsistent, "w": cluster.DiskDiskless}[h.ID]
		if h.Disk != want || h.Witness != (h.ID == "w") {
			t.Fatalf("host %s: disk %s witness %t, want %s and witness only for w", h.ID, h.Disk, h.Witness, want)
		}
	}
	cl.promoteInitial()
	for _, h := range []string{"a", "b", "w"} {
		v := cl.waitState(h, 10*time.Second, "a primary in epoch 1", func(v cluster.VolumeState) bool {
			return v.Primary == "a" && v.Epoch == 1
		})
		if v.ForcedPromotions != 1 || v.LastForced.Node != "a" || v.LastForced.Reason != "initial sync" {
			t.Fatalf("status on %s: forced promotions %d, last %+v", h, v.ForcedPromotions, v.LastForced)
		}
	}
	// A host with another CA's certificate cannot join; the member says
	// why and exits.
	other := t.TempDir()
	ldmirror(t, "pki", "init", "--dir", filepath.Join(other, "pki"))
	ldmirror(t, "pki", "issue", "--dir", filepath.Join(other, "pki"), "--witness", "x")
	intruder := cl.lab.Command("w", binary, "witness", "--data-dir", t.TempDir(), "--node-id", "x",
		"--bind", cl.lab.Addr("w")+":7401", "--tls-dir", filepath.Join(other, "pki"), "--join", cl.lab.Addr("a")+":"+clusterPort)
	if out, err := waitExit(t, intruder, 20*time.Second); err == nil || !strings.Contains(out, "authentication failed") {
		t.Fatalf("member with another CA's certificate: exit %v, output:\n%s", err, out)
	}
	// A host that claims to be x with w's certificate does not start.
	impostor := cl.lab.Command("w", binary, "witness", "--data-dir", t.TempDir(), "--node-id", "x",
		"--bind", cl.lab.Addr("w")+":7401", "--tls-ca", filepath.Join(cl.creds, "ca.crt"),
		"--tls-cert", filepath.Join(cl.creds, "w.crt"), "--tls-key", filepath.Join(cl.creds, "w.key"), "--join", cl.lab.Addr("a")+":"+clusterPort)
	if out, err := waitExit(t, impostor, 20*time.Second); err == nil || !strings.Contains(out, "names witness w, this member is witness x") {
		t.Fatalf("member x with w's certificate: exit %v, output:\n%s", err, out)
	}
	if st, err := cl.status("a"); err != nil || len(st.Members) != 3 || len(st.Volume.Hosts) != 3 {
		t.Fatalf("after a refused join: members %+v, hosts %+v, %v", st.Members, st.Volume.Hosts, err)
	}

	text := cl.mustCtl("w", "cluster", "status")
	for _, want := range []string{"primary:  a", "epoch:    1", "witness", "forced promotions: 1", `"initial sync"`} {
		if !strings.Contains(text, want) {
			t.Fatalf("cluster status lacks %q:\n%s", want, text)
		}
	}
	t.Logf("cluster status on w:\n%s", text)
}

// TestClusterQuorum: with w's link down, a and b still commit; with b's
// down too, a command on a fails with no quorum at its deadline; once the
// links are back, commands commit again.
func TestClusterQuorum(t *testing.T) {
	cl := newClusterLab(t)
	cl.promoteInitial()

	cl.lab.LinkDown("w")
	if out := cl.mustCtl("a", "demote", "a"); !strings.Contains(out, "no primary in epoch 2") {
		t.Fatalf("demote without w: %q", out)
	}
	if out := cl.mustCtl("b", "promote", "a"); !strings.Contains(out, "a is primary in epoch 3") {
		t.Fatalf("promote without w: %q", out)
	}

	cl.lab.LinkDown("b")
	start := time.Now()
	_, err := cl.ctl("a", "demote", "a", "--epoch", "3", "--timeout", "3s")
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "no quorum") {
		t.Fatalf("demote on a alone: got %v, want a no-quorum error", err)
	}
	if took > 8*time.Second {
		t.Fatalf("demote with a 3s timeout took %v", took)
	}
	t.Logf("without quorum: %v after %v", err, took.Round(time.Millisecond))
	// a's own copy is readable alone; a read through the leader is not.
	if _, err := cl.status("a"); err != nil {
		t.Fatalf("status on a alone: %v", err)
	}
	if _, err := cl.ctl("a", "cluster", "status", "--consistent", "--timeout", "1s"); err == nil || !strings.Contains(err.Error(), "no quorum") {
		t.Fatalf("consistent status on a alone: got %v, want a no-quorum error", err)
	}

	cl.lab.LinkUp("b")
	cl.lab.LinkUp("w")
	// The refused demote may still commit once a reaches the others (raft
	// keeps an appended entry); promote a is right either way.
	poll.Until(t, 30*time.Second, "a command to commit after the links are back", func() bool {
		_, err := cl.ctl("a", "promote", "a", "--timeout", "3s")
		return err == nil
	})
	for _, h := range []string{"a", "b", "w"} {
		cl.waitState(h, 10*time.Second, "a primary", func(v cluster.VolumeState) bool { return v.Primary == "a" && v.Epoch >= 3 })
	}
}

// TestClusterPartitionFailover: a, primary, is cut off from b and w. It can
// commit nothing; b and w promote b (forced: b never synced, so it is not
// uptodate and Failover refuses it). After the partition heals, a's own
// copy shows b primary in the new epoch and a outdated.
func TestClusterPartitionFailover(t *testing.T) {
	cl := newClusterLab(t)
	cl.promoteInitial()
	cl.waitState("a", 10*time.Second, "a primary", func(v cluster.VolumeState) bool { return v.Primary == "a" && v.Epoch == 1 })

	cl.lab.Partition("a", "b")
	cl.lab.Partition("a", "w")
	if _, err := cl.ctl("b", "promote", "b", "--timeout", "20s"); err == nil || !strings.Contains(err.Error(), cluster.ErrNotUpToDate.Error()) {
		t.Fatalf("promote inconsistent b: got %v, want %q", err, cluster.ErrNotUpToDate)
	}
	out := cl.mustCtl("w", "promote", "b", "--force", "--reason", "a cut off from b and w", "--timeout", "20s")
	if !strings.Contains(out, "b is primary in epoch 2 (forced)") {
		t.Fatalf("forced promote of b: %q", out)
	}
	if _, err := cl.ctl("a", "demote", "a", "--epoch", "1", "--timeout", "2s"); err == nil || !strings.Contains(err.Error(), "no quorum") {
		t.Fatalf("a, partitioned, committed or failed otherwise: %v", err)
	}
	if v, err := cl.status("a"); err != nil || v.Volume.Primary != "a" || v.Volume.Epoch != 1 {
		t.Fatalf("a's copy during the partition: %+v, %v (want a primary in epoch 1: it cannot learn more)", v.Volume, err)
	}

	cl.lab.Heal("a", "b")
	cl.lab.Heal("a", "w")
	v := cl.waitState("a", 30*time.Second, "b primary in epoch 2", func(v cluster.VolumeState) bool {
		return v.Primary == "b" && v.Epoch == 2
	})
	if h, _ := v.Host("a"); h.Disk != cluster.DiskOutdated {
		t.Fatalf("displaced a is %s, want outdated", h.Disk)
	}
	if v.LastForced.Node != "b" || v.ForcedPromotions != 2 {
		t.Fatalf("forced promotions %d, last %+v", v.ForcedPromotions, v.LastForced)
	}
	// a's old epoch is fenced: its demote is refused as stale.
	if _, err := cl.ctl("a", "demote", "a", "--epoch", "1"); err == nil || !strings.Contains(err.Error(), cluster.ErrStaleEpoch.Error()) {
		t.Fatalf("demote in a's old epoch: got %v, want %q", err, cluster.ErrStaleEpoch)
	}
}

// restartTrailingLogs is the --raft-trailing-logs of TestClusterRestart.
const restartTrailingLogs = 2

// TestClusterRestart: members snapshot every few entries and keep only
// restartTrailingLogs after each, so the first entries (registrations, the
// forced promotion) survive in snapshots only. Every member is killed with
// SIGKILL and restarted with its original flags; the state is what it was,
// and commands commit.
func TestClusterRestart(t *testing.T) {
	cl := newClusterLab(t, "--raft-snapshot-threshold", "4", "--raft-snapshot-interval", "50ms",
		"--raft-trailing-logs", strconv.Itoa(restartTrailingLogs))
	cl.promoteInitial()
	forced := cl.waitState("w", 10*time.Second, "a primary in epoch 1", func(v cluster.VolumeState) bool {
		return v.Primary == "a" && v.Epoch == 1
	}).LastForced.Index
	// The older of two snapshots at or past forced+trailing means the log
	// was compacted past forced: raft compacts right after a snapshot, on
	// the goroutine that takes the next one.
	epoch := cluster.Epoch(1)
	poll.Until(t, 30*time.Second, fmt.Sprintf("every member to compact its log past the forced promotion (index %d)", forced), func() bool {
		done := true
		for _, h := range []string{"a", "b", "w"} {
			idx := snapshotIndexes(filepath.Join(cl.members[h].dir, cluster.SnapshotDir))
			done = done && len(idx) >= 2 && idx[1] >= forced+restartTrailingLogs
		}
		if !done {
			// Far more than a snapshot every 4 entries needs: the member
			// ignores --raft-snapshot-threshold.
			if epoch > 100 {
				t.Fatalf("no log compacted past index %d after %d role changes", forced, epoch-1)
			}
			cl.mustCtl("a", "demote", "a")
			cl.mustCtl("a", "promote", "a")
			epoch += 2
		}
		return done
	})
	before := cl.waitState("w", 10*time.Second, fmt.Sprintf("a primary in epoch %d", epoch), func(v cluster.VolumeState) bool {
		return v.Primary == "a" && v.Epoch == epoch
	})

	for _, h := range []string{"a", "b", "w"} {
		cl.kill(h)
	}
	for _, h := range []string{"a", "b", "w"} {
		first := firstLogIndex(t, filepath.Join(cl.members[h].dir, cluster.StoreFile))
		if first <= forced {
			t.Fatalf("%s's log starts at index %d: the forced promotion (%d) is still in it, not only in a snapshot", h, first, forced)
		}
		t.Logf("%s: log from index %d, snapshots at %v; forced promotion at %d, epoch %d", h, first,
			snapshotIndexes(filepath.Join(cl.members[h].dir, cluster.SnapshotDir)), forced, epoch)
	}
	for _, h := range []string{"w", "b", "a"} {
		cl.start(h)
	}
	cl.waitFormed(30 * time.Second)
	for _, h := range []string{"a", "b", "w"} {
		after := cl.waitState(h, 10*time.Second, "the state from before the restart", func(v cluster.VolumeState) bool {
			return v.Index >= before.Index
		})
		if !sameState(before, after) || after.ForcedPromotions != 1 {
			t.Fatalf("state on %s after restart:\n%+v\nbefore:\n%+v", h, after, before)
		}
	}
	if out, want := cl.mustCtl("b", "demote", "a"), fmt.Sprintf("no primary in epoch %d", epoch+1); !strings.Contains(out, want) {
		t.Fatalf("demote after restart: %q, want %q", out, want)
	}
}

// snapshotIndexes returns the raft index of each complete snapshot in dir,
// newest first; a snapshot being written or reaped is left out.
func snapshotIndexes(dir string) []uint64 {
	entries, _ := os.ReadDir(dir)
	var idx []uint64
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name(), "meta.json"))
		var meta raft.SnapshotMeta
		if err != nil || strings.HasSuffix(e.Name(), ".tmp") || json.Unmarshal(b, &meta) != nil {
			continue
		}
		idx = append(idx, meta.Index)
	}
	slices.Sort(idx)
	slices.Reverse(idx)
	return idx
}

// firstLogIndex reads the first raft log index in the bolt store at path,
// whose member must be stopped.
func firstLogIndex(t *testing.T, path string) uint64 {
	t.Helper()
	s, err := raftboltdb.New(raftboltdb.Options{Path: path, BoltOptions: &bbolt.Options{ReadOnly: true, Timeout: time.Second}})
	if err != nil {
		t.Fatalf("open %s: %v", path, err)
	}
	defer s.Close()
	first, err := s.FirstIndex()
	if err != nil {
		t.Fatalf("first log index in %s: %v", path, err)
	}
	return first
}

// sameState compares what a restart must keep.
func sameState(a, b cluster.VolumeState) bool {
	return a.Primary == b.Primary && a.Epoch == b.Epoch && a.EpochIndex == b.EpochIndex &&
		slices.Equal(a.Hosts, b.Hosts) && a.ForcedPromotions == b.ForcedPromotions &&
		a.LastForced.Node == b.LastForced.Node && a.LastForced.Reason == b.LastForced.Reason &&
		a.LastForced.Epoch == b.LastForced.Epoch && a.LastForced.Index == b.LastForced.Index &&
		a.LastForced.At.Equal(b.LastForced.At)
}

// TestClusterRemoveJoin replaces the witness the way docs/cluster.md says.
func TestClusterRemoveJoin(t *testing.T) {
	cl := newClusterLab(t)
	cl.promoteInitial()
	if _, err := cl.ctl("b", "cluster", "remove", "a"); err == nil || !strings.Contains(err.Error(), cluster.ErrIsPrimary.Error()) {
		t.Fatalf("remove the primary: got %v, want %q", err, cluster.ErrIsPrimary)
	}
	cl.replace("w", "a", "b")
	cl.waitState("w", 10*time.Second, "a primary in epoch 1", func(v cluster.VolumeState) bool {
		return v.Primary == "a" && v.Epoch == 1
	})
}

// TestClusterCorruptStore: w's raft.db is damaged while w is down. Started
// again, w exits non-zero saying the store is corrupt and naming the file;
// a and b keep committing without it. w is then replaced the way
// docs/cluster.md says and catches up.
func TestClusterCorruptStore(t *testing.T) {
	cl := newClusterLab(t)
	cl.promoteInitial()
	w := cl.members["w"]
	cl.kill("w")
	store := filepath.Join(w.dir, cluster.StoreFile)
	f, err := os.OpenFile(store, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Garbage over both bolt meta pages: the first two pages of the file.
	_, err = f.WriteAt(bytes.Repeat([]byte{0xa5}, 2*os.Getpagesize()), 0)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	out, err := waitExit(t, cl.lab.Command("w", binary, w.args...), 20*time.Second)
	if want := cluster.ErrCorruptStore.Error() + ": " + store; err == nil || !strings.Contains(out, want) {
		t.Fatalf("member with a damaged store: exit %v, want non-zero and %q in its output:\n%s", err, want, out)
	}
	t.Logf("member with a damaged store: %v: %s", err, strings.TrimSpace(out))
	if out := cl.mustCtl("b", "demote", "a"); !strings.Contains(out, "no primary in epoch 2") {
		t.Fatalf("demote without w: %q", out)
	}
	cl.replace("w", "a", "b")
	cl.waitState("w", 10*time.Second, "no primary in epoch 2", func(v cluster.VolumeState) bool {
		return v.Primary == "" && v.Epoch == 2
	})
	if out := cl.mustCtl("w", "promote", "a"); !strings.Contains(out, "a is primary in epoch 3") {
		t.Fatalf("promote after replacing w: %q", out)
	}
}

// replace replaces host as docs/cluster.md says for a dead host or a
// damaged store: `cluster remove` on the healthy member on, host's data
// directory moved aside, host started empty without --join or --bootstrap
// and joined with `cluster join` through via's cluster port.
func (cl *clusterLab) replace(host, on, via string) {
	cl.t.Helper()
	if out := cl.mustCtl(on, "cluster", "remove", host); strings.TrimSpace(out) != "removed "+host {
		cl.t.Fatalf("remove %s printed %q", host, out)
	}
	poll.Until(cl.t, 10*time.Second, on+" to know two voters and two hosts", func() bool {
		st, err := cl.status(on)
		return err == nil && len(st.Members) == 2 && len(st.Volume.Hosts) == 2
	})
	m := cl.members[host]
	cl.kill(host)
	if err := os.Rename(m.dir, m.dir+".old"); err != nil {
		cl.t.Fatal(err)
	}
	if err := os.MkdirAll(m.dir, 0o700); err != nil {
		cl.t.Fatal(err)
	}
	if i := slices.Index(m.args, "--join"); i >= 0 {
		m.args = slices.Delete(m.args, i, i+2)
	}
	m.args = slices.DeleteFunc(m.args, func(a string) bool { return a == "--bootstrap" })
	cl.start(host)
	if out := cl.mustCtl(host, "cluster", "join", cl.lab.Addr(via)+":"+clusterPort); !strings.Contains(out, "joined via") {
		cl.t.Fatalf("cluster join printed %q", out)
	}
	cl.waitFormed(30 * time.Second)
}

// waitExit runs cmd until it exits and returns its combined output and
// exit error; a command still running after limit is killed and fails the
// test.
func waitExit(t *testing.T, cmd *exec.Cmd, limit time.Duration) (string, error) {
	t.Helper()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		return out.String(), err
	case <-time.After(limit):
		_ = cmd.Process.Kill()
		<-exited
		t.Fatalf("%s still running after %v:\n%s", strings.Join(cmd.Args, " "), limit, out.String())
		return "", nil
	}
}
