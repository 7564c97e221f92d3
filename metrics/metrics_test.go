package metrics

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/ldapagent/agent"
	"github.com/ldmirror/ldmirror/mirror"
	"github.com/ldmirror/ldmirror/node"
)

// scrape returns what a scrape of m gets.
func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("scrape: %d %s", rec.Code, rec.Body)
	}
	return rec.Body.String()
}

func resyncingPrimary() node.Status {
	return node.Status{
		Node: "a", Role: cluster.RolePrimary, Link: node.LinkConnected, Replication: mirror.StateResyncing,
		Disk: cluster.DiskUpToDate, PeerDisk: cluster.DiskInconsistent, Epoch: 7,
		DirtyBlocks: 300, DirtyBytes: 300 * 4096, WritesShipped: 10, ResyncDone: 100, ResyncTotal: 400, ResyncRate: 1 << 20, ResyncETASec: 1.2,
		Agent: &agent.Status{State: agent.StatePrimaryServing, Failovers: 2,
			LastHooks: []agent.HookResult{{Sequence: "promote", Name: "mount", DurationMs: 120}, {Sequence: "promote", Name: "start", DurationMs: 10, Error: "exit 1"}}},
		LDAP: &node.LDAPHealth{Up: true, Probes: 5, LastLatencyMs: 2},
	}
}

// TestSeries: the status becomes the series docs/operations.md lists.
func TestSeries(t *testing.T) {
	m := New(resyncingPrimary, "v1.2.3")
	m.ObserveWrite(300 * time.Microsecond)
	m.ObservePeerAck(200 * time.Microsecond)
	out := scrape(t, m)
	for _, want := range []string{
		`ldmirror_build_info{node="a",version="v1.2.3"} 1`,
		`ldmirror_role{role="primary"} 1`,
		`ldmirror_role{role="secondary"} 0`,
		`ldmirror_epoch 7`,
		`ldmirror_link_state{state="connected"} 1`,
		`ldmirror_replication_state{state="resyncing"} 1`,
		`ldmirror_replication_state{state="replicating"} 0`,
		`ldmirror_disk_state{disk="peer",state="inconsistent"} 1`,
		`ldmirror_dirty_bytes 1.2288e+06`,
		`ldmirror_shipped_writes_total 10`,
		`ldmirror_resync_progress_ratio 0.25`,
		`ldmirror_resync_eta_seconds 1.2`,
		`ldmirror_agent_failovers_total 2`,
		`ldmirror_agent_state{state="primary-serving"} 1`,
		`ldmirror_agent_hook_success{hook="start",sequence="promote"} 0`,
		`ldmirror_agent_hook_duration_seconds{hook="mount",sequence="promote"} 0.12`,
		`ldmirror_probe_up 1`,
		`ldmirror_write_duration_seconds_count 1`,
		`ldmirror_peer_ack_duration_seconds_bucket{le="0.0002"} 1`,
		`process_start_time_seconds`,
	} {
		if !strings.Contains(out, want+"\n") && !strings.Contains(out, want+" ") {
			t.Errorf("scrape lacks %s", want)
		}
	}
	if t.Failed() {
		t.Logf("scrape:\n%s", out)
	}
}

// TestDiskFailedSeries: a failed disk shows as its state.
func TestDiskFailedSeries(t *testing.T) {
	out := scrape(t, New(func() node.Status {
		st := resyncingPrimary()
		st.Disk = cluster.DiskFailed
		return st
	}, "v1"))
	for _, want := range []string{`ldmirror_disk_state{disk="local",state="failed"} 1`, `ldmirror_disk_state{disk="local",state="uptodate"} 0`} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("scrape lacks %s:\n%s", want, out)
		}
	}
}

// TestPromtoolCheck: the exposition passes `promtool check metrics`, the
// linter of Prometheus's naming conventions (Debian's prometheus package).
func TestPromtoolCheck(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("needs promtool (Debian package prometheus; scripts/test.sh installs it as root)")
	}
	st := resyncingPrimary()
	target := st
	target.Role, target.Replication, target.Agent, target.LDAP = cluster.RoleSecondary, node.ReplicationResyncTarget, nil, nil
	for name, status := range map[string]func() node.Status{
		"resync source": func() node.Status { return st },
		"resync target": func() node.Status { return target },
		"no term yet":   func() node.Status { return node.Status{Node: "b", Replication: node.ReplicationNoTerm} },
	} {
		out := scrape(t, New(status, "(devel)"))
		p := filepath.Join(t.TempDir(), "metrics.txt")
		if err := os.WriteFile(p, []byte(out), 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = f
		res, err := cmd.CombinedOutput()
		f.Close()
		if err != nil {
			t.Errorf("%s: promtool check metrics: %v\n%s", name, err, res)
		}
	}
}

// TestServe: Serve answers at /metrics, and Close stops it.
func TestServe(t *testing.T) {
	m := New(resyncingPrimary, "v1")
	s, err := Serve("127.0.0.1:0", m.Handler(), discard())
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + s.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), "ldmirror_epoch 7") {
		t.Fatalf("GET /metrics: %s", b)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
