package cluster

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/internal/pkitest"
	"github.com/ldmirror/ldmirror/internal/poll"
	"github.com/ldmirror/ldmirror/pki"
)

func testLogger() *slog.Logger {
	if os.Getenv("LDMIRROR_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// testConfig is member id's configuration, with a certificate from ca.
func testConfig(t *testing.T, ca *pkitest.CA, id string, witness bool) Config {
	role := pki.RoleData
	if witness {
		role = pki.RoleWitness
	}
	return Config{
		NodeID:             id,
		BindAddr:           "127.0.0.1:0",
		DataDir:            filepath.Join(t.TempDir(), id),
		TLS:                ca.Source(id, role),
		Witness:            witness,
		Logger:             testLogger().With("node", id),
		HeartbeatTimeout:   400 * time.Millisecond,
		ElectionTimeout:    400 * time.Millisecond,
		LeaderLeaseTimeout: 200 * time.Millisecond,
		CommitTimeout:      10 * time.Millisecond,
		DialTimeout:        2 * time.Second,
	}
}

// member is a test host that can be stopped and started again from its
// data directory at the same address.
type member struct {
	t   *testing.T
	cfg Config
	c   *Cluster
	ca  *pkitest.CA // the CA of its certificate
}

func startMember(t *testing.T, cfg Config) *member {
	t.Helper()
	m := &member{t: t, cfg: cfg}
	m.start()
	t.Cleanup(m.stop)
	return m
}

func (m *member) start() {
	m.t.Helper()
	c, err := Open(m.cfg)
	if err != nil {
		m.t.Fatalf("open %s: %v", m.cfg.NodeID, err)
	}
	m.c = c
	// Restart at the same address: the others know it from the raft
	// configuration.
	m.cfg.BindAddr = c.Addr()
}

func (m *member) stop() {
	if m.c != nil {
		if err := m.c.Close(); err != nil {
			m.t.Errorf("close %s: %v", m.cfg.NodeID, err)
		}
		m.c = nil
	}
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// startTrio bootstraps a three-voter cluster: data hosts a and b, witness
// w. first names who bootstraps; the others join through the one before
// them, so joins exercise forwarding from a follower.
func startTrio(t *testing.T, first string, tweak func(*Config)) map[string]*member {
	t.Helper()
	ca := pkitest.New(t)
	ms := map[string]*member{}
	order := []string{first}
	for _, id := range []string{"a", "b", "w"} {
		if id != first {
			order = append(order, id)
		}
	}
	for i, id := range order {
		cfg := testConfig(t, ca, id, id == "w")
		if tweak != nil {
			tweak(&cfg)
		}
		m := startMember(t, cfg)
		m.ca = ca
		ms[id] = m
		ctx := ctxFor(t, 10*time.Second)
		if i == 0 {
			if err := m.c.Bootstrap(ctx); err != nil {
				t.Fatalf("bootstrap %s: %v", id, err)
			}
			continue
		}
		if err := m.c.Join(ctx, ms[order[i-1]].c.Addr()); err != nil {
			t.Fatalf("join %s: %v", id, err)
		}
	}
	for _, m := range ms {
		poll.Until(t, 5*time.Second, m.cfg.NodeID+" to see all three hosts", func() bool { return len(m.c.State().Hosts) == 3 })
	}
	return ms
}

// converged waits until every running member has applied the same state.
func converged(t *testing.T, ms map[string]*member, want func(VolumeState) bool) {
	t.Helper()
	for id, m := range ms {
		if m.c == nil {
			continue
		}
		poll.Until(t, 5*time.Second, id+" to apply the change", func() bool { return want(m.c.State()) })
	}
}

// makePrimary makes node primary in epoch 1, as an operator does a fresh
// pair's first (forced) promotion through member c, and node then records
// its peer uptodate, as it does after the first resync.
func makePrimary(t *testing.T, ctx context.Context, ms map[string]*member, c *Cluster, node string) {
	t.Helper()
	if e, err := c.Promote(ctx, node, true, "first primary"); err != nil || e != 1 {
		t.Fatalf("promote %s: epoch %d, %v; want 1", node, e, err)
	}
	peer := map[string]string{"a": "b", "b": "a"}[node]
	if err := ms[node].c.SetDiskState(ctx, peer, DiskUpToDate, 1); err != nil {
		t.Fatal(err)
	}
}

func stripIndex(s VolumeState) VolumeState {
	s.Index = 0
	return s
}
