package node

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/ldmirror/ldmirror/blockdev"
	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/internal/logbuf"
	"github.com/ldmirror/ldmirror/internal/pkitest"
	"github.com/ldmirror/ldmirror/internal/slapdtest"
	"github.com/ldmirror/ldmirror/journal"
	"github.com/ldmirror/ldmirror/ldapagent/probe"
	"github.com/ldmirror/ldmirror/mirror"
	"github.com/ldmirror/ldmirror/pki"
	"github.com/ldmirror/ldmirror/volume"
)

func TestOpenRejects(t *testing.T) {
	secret := []byte("node-test-secret-0123456789")
	ca := pkitest.New(t)
	certB, certW := ca.Source("b", pki.RoleData), ca.Source("w", pki.RoleWitness)
	vol := func(t *testing.T) string {
		dir := t.TempDir()
		if _, err := volume.Create(dir, 1<<20, 4096, uuid.Nil, false); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	for _, tc := range []struct {
		name   string
		setup  func(t *testing.T, dir string)
		cfg    Config
		want   string
		wantIs error
	}{
		{"no volume", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, volume.MetaFile)) },
			Config{Role: cluster.RolePrimary, NodeID: "a"}, "run ldmirror init", volume.ErrNoVolume},
		{"backing file of the wrong size", func(t *testing.T, dir string) {
			if err := os.Truncate(filepath.Join(dir, volume.BackingFile), 1<<19); err != nil {
				t.Fatal(err)
			}
		}, Config{Role: cluster.RolePrimary, NodeID: "a"}, "is 524288 bytes, the volume is 1048576 bytes", blockdev.ErrWrongSize},
		{"corrupt metadata", func(t *testing.T, dir string) {
			if err := os.WriteFile(filepath.Join(dir, volume.MetaFile), []byte("{not json"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, Config{Role: cluster.RolePrimary, NodeID: "a"}, "meta.json", nil},
		{"metadata from a newer version", func(t *testing.T, dir string) {
			if err := os.WriteFile(filepath.Join(dir, volume.MetaFile), []byte(`{"version":9,"size_bytes":1048576,"block_size_bytes":4096}`), 0o600); err != nil {
				t.Fatal(err)
			}
		}, Config{Role: cluster.RolePrimary, NodeID: "a"}, "metadata version 9, this ldmirror reads version 1", nil},
		{"unknown role", nil, Config{Role: "leader", NodeID: "a"}, `role must be "primary" or "secondary", got "leader"`, nil},
		{"secondary without listen", nil, Config{Role: cluster.RoleSecondary, NodeID: "b", Secret: secret, InsecurePlaintext: true}, "needs --listen", nil},
		{"no node id", nil, Config{Role: cluster.RolePrimary}, "node id", nil},
		{"short secret", nil, Config{Role: cluster.RolePrimary, NodeID: "a", Peer: "127.0.0.1:1", Secret: []byte("short"), InsecurePlaintext: true}, "shared secret is 5 bytes, need at least 16", nil},
		{"no certificate and no plaintext", nil, Config{Role: cluster.RolePrimary, NodeID: "a", Peer: "127.0.0.1:1"}, "needs this host's TLS certificate", nil},
		{"another node's certificate", nil, Config{Role: cluster.RolePrimary, NodeID: "a", Peer: "127.0.0.1:1", TLS: certB}, "names data b; this host is data host a", nil},
		{"a witness's certificate", nil, Config{Role: cluster.RoleSecondary, NodeID: "w", Listen: "127.0.0.1:0", TLS: certW}, "names witness w; this host is data host w", nil},
		{"certificate and plaintext", nil, Config{Role: cluster.RoleSecondary, NodeID: "b", Listen: "127.0.0.1:0", TLS: certB, InsecurePlaintext: true, Secret: secret}, "exclude each other", nil},
		{"passthrough with a peer", nil, Config{Role: cluster.RolePrimary, NodeID: "a", Peer: "127.0.0.1:1", Secret: secret, InsecurePlaintext: true, Passthrough: true}, "drop --peer", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := vol(t)
			if tc.setup != nil {
				tc.setup(t, dir)
			}
			cfg := tc.cfg
			cfg.Dir = dir
			n, err := Open(cfg)
			if err == nil {
				n.Close()
				t.Fatal("Open succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Fatalf("err = %v, want errors.Is %v", err, tc.wantIs)
			}
		})
	}
}

func TestSecondDaemonOnAVolumeIsRefused(t *testing.T) {
	dir := t.TempDir()
	if _, err := volume.Create(dir, 1<<20, 4096, uuid.Nil, false); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Dir: dir, Role: cluster.RolePrimary, NodeID: "a"}
	n, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if !n.Status().NoControlPlane {
		t.Error("status of a node without a control plane does not say so")
	}
	before, _ := os.ReadFile(filepath.Join(dir, volume.MetaFile))
	if _, err := Open(cfg); err == nil || !strings.Contains(err.Error(), "in use by another ldmirror daemon") {
		t.Fatalf("second Open = %v, want the volume reported in use", err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, volume.MetaFile))
	if string(before) != string(after) {
		t.Fatal("the second daemon changed the metadata")
	}
}

func TestGenerationsAcrossPrimaryLife(t *testing.T) {
	dir := t.TempDir()
	if _, err := volume.Create(dir, 1<<20, 4096, uuid.Nil, false); err != nil {
		t.Fatal(err)
	}
	initial, _ := volume.Load(dir)
	cfg := Config{Dir: dir, Role: cluster.RolePrimary, NodeID: "a", Peer: "127.0.0.1:1", Secret: []byte("node-test-secret-0123456789"), InsecurePlaintext: true}

	// A primary that is not stopped cleanly leaves primary_active set.
	n, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if m, _ := volume.Load(dir); !m.PrimaryActive || m.Generations != initial.Generations {
		t.Fatalf("after start: %+v", m)
	}
	// Two blocks written while the peer is unreachable stay out of sync.
	if _, err := n.mirror.WriteAt(make([]byte, 8192), 40960); err != nil {
		t.Fatal(err)
	}
	n.Close() // a crash of the daemon: no stopPrimary

	n, err = Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := volume.Load(dir)
	if m.Generations.Bitmap != initial.Generations.Current || m.Generations.Current == initial.Generations.Current {
		t.Fatalf("after a crash the primary must start a new generation: %v -> %v", initial.Generations, m.Generations)
	}
	if got := n.dirty.Dirty(); got != 2 || !n.dirty.IsDirty(10) || !n.dirty.IsDirty(11) {
		t.Fatalf("after a crash %d blocks are out of sync, want blocks 10 and 11", got)
	}
	// A clean stop with blocks still dirty keeps tracking them.
	if err := n.stopPrimary(); err != nil {
		t.Fatal(err)
	}
	n.Close()
	if m2, _ := volume.Load(dir); m2.PrimaryActive || m2.Generations != m.Generations {
		t.Fatalf("after a clean stop: %+v", m2)
	}
}

// A primary that crashed before the scoreboard existed does not know what
// its peer misses: everything is out of sync, and stays so across a restart
// until a resync copied it.
func TestCrashWithoutScoreboardResyncsEverything(t *testing.T) {
	dir := t.TempDir()
	if _, err := volume.Create(dir, 1<<20, 4096, uuid.Nil, false); err != nil {
		t.Fatal(err)
	}
	m, _ := volume.Load(dir)
	m.PrimaryActive = true
	if err := volume.Save(dir, m); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Dir: dir, Role: cluster.RolePrimary, NodeID: "a", Peer: "127.0.0.1:1", Secret: []byte("node-test-secret-0123456789"), InsecurePlaintext: true}
	for run := range 2 {
		n, err := Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if got := n.dirty.Dirty(); got != 256 {
			t.Fatalf("run %d: %d of 256 blocks out of sync, want all", run, got)
		}
		n.Close()
	}
}

// TestProbeHealthInStatus runs a host with a probe of a real slapd: status
// shows it up, then down after the threshold once slapd is killed.
func TestProbeHealthInStatus(t *testing.T) {
	srv := slapdtest.Start(t, slapdtest.Options{})
	dir := t.TempDir()
	if _, err := volume.Create(dir, 1<<20, 4096, uuid.Nil, false); err != nil {
		t.Fatal(err)
	}
	logs := &logbuf.Buffer{}
	n, err := Open(Config{
		Dir: dir, Role: cluster.RoleSecondary, NodeID: "b", Listen: "127.0.0.1:0", Secret: []byte("node-test-secret-0123456789"), InsecurePlaintext: true,
		Probe:  probe.Config{URL: srv.URL, Interval: 50 * time.Millisecond, Threshold: 2},
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	waitStatus := func(what string, cond func(*LDAPHealth) bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			st := n.Status()
			if st.LDAP != nil && cond(st.LDAP) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("status never showed %s: %+v", what, st.LDAP)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitStatus("ldap up", func(l *LDAPHealth) bool { return l.Up && !l.LastSuccess.IsZero() && l.URL == srv.URL })
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	waitStatus("ldap down", func(l *LDAPHealth) bool {
		return !l.Up && l.ConsecutiveFailures >= 2 && strings.Contains(l.LastError, "connect")
	})
	if out := logs.String(); !strings.Contains(out, `msg="directory server up"`) || !strings.Contains(out, `msg="directory server down"`) {
		t.Fatalf("the transitions are not logged:\n%s", out)
	}
}

// TestJournalAcrossTerms: an async primary killed and started again resumes
// its journal, redone onto the backing file; a secondary term discards it
// (its disk takes the peer's writes), and so does a sync primary term; a
// primary term forgets the position this host applied in its peer's
// journal but keeps the numbering.
func TestJournalAcrossTerms(t *testing.T) {
	dir := t.TempDir()
	if _, err := volume.Create(dir, 1<<20, 4096, uuid.Nil, false); err != nil {
		t.Fatal(err)
	}
	secret := []byte("node-test-secret-0123456789")
	logs := &logbuf.Buffer{}
	primary := Config{Dir: dir, Role: cluster.RolePrimary, NodeID: "a", Peer: "127.0.0.1:1", Secret: secret, InsecurePlaintext: true, Mode: mirror.ModeAsync,
		JournalSize: journal.MinCapacity * 4, Logger: slog.New(slog.NewTextHandler(logs, nil))}
	jpath := filepath.Join(dir, volume.JournalFile)
	journalState := func() (id, next uint64, stopped bool, why string) {
		t.Helper()
		j, err := journal.Open(jpath)
		if err != nil {
			t.Fatal(err)
		}
		defer j.Close()
		stopped, why = j.Stopped()
		return j.ID(), j.Next(), stopped, why
	}

	// A position applied as a secondary in the peer's journal.
	af, err := journal.OpenAppliedFile(filepath.Join(dir, volume.AppliedFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := af.Store(journal.Position{ID: 77, Seq: 500}); err != nil {
		t.Fatal(err)
	}
	af.Close()

	n, err := Open(primary)
	if err != nil {
		t.Fatal(err)
	}
	af, err = journal.OpenAppliedFile(filepath.Join(dir, volume.AppliedFile))
	if err != nil {
		t.Fatal(err)
	}
	if pos := af.Position(); pos != (journal.Position{Seq: 500}) {
		t.Fatalf("a primary term left the applied position %+v; want the peer's journal forgotten, seq 500 kept", pos)
	}
	af.Close()
	if _, err := n.mirror.WriteAt(make([]byte, 8192), 40960); err != nil {
		t.Fatal(err)
	}
	next := n.mirror.Status().JournalNewest + 1
	if next != 502 {
		t.Fatalf("after one write the next seq is %d; want 502: the journal numbers on from the applied seq 500", next)
	}
	n.Close() // a crash of the daemon: the journal is not closed

	n, err = Open(primary)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "journal resumed") || n.mirror.Status().JournalNewest+1 != next {
		t.Fatalf("after the crash: newest seq %d, want %d and the journal resumed; log:\n%s", n.mirror.Status().JournalNewest, next-1, logs)
	}
	n.Close()
	id, _, _, _ := journalState()

	secondary := primary
	secondary.Role, secondary.Peer, secondary.Listen = cluster.RoleSecondary, "", "127.0.0.1:0"
	n, err = Open(secondary)
	if err != nil {
		t.Fatal(err)
	}
	n.Close()
	if sid, snext, stopped, why := journalState(); sid != id || snext != next || !stopped || !strings.Contains(why, "became secondary") {
		t.Fatalf("after a secondary term: journal %x next %d stopped %v (%s); want %x, %d, stopped", sid, snext, stopped, why, id, next)
	}

	n, err = Open(primary)
	if err != nil {
		t.Fatal(err)
	}
	if fr := n.mirror.Status().FallbackReason; !strings.Contains(fr, "became secondary") {
		t.Fatalf("a primary after a secondary term: fallback reason %q; want the discarded journal's reason", fr)
	}
	n.Close()
	nid, nnext, stopped, _ := journalState()
	if nid == id || nnext != next || stopped {
		t.Fatalf("after the secondary term a primary term has journal %x next %d stopped %v; want a new journal from %d", nid, nnext, stopped, next)
	}

	sync := primary
	sync.Mode = mirror.ModeSync
	n, err = Open(sync)
	if err != nil {
		t.Fatal(err)
	}
	n.Close()
	if _, _, stopped, why := journalState(); !stopped || !strings.Contains(why, "sync mode") {
		t.Fatalf("after a sync primary term the journal is stopped %v (%s); want stopped", stopped, why)
	}
}

// TestDiscardLocalStopsJournal: `resolve --discard-local` stops the journal
// too, so that a later primary term never redoes it over the data the peer
// resyncs here.
func TestDiscardLocalStopsJournal(t *testing.T) {
	dir := t.TempDir()
	if _, err := volume.Create(dir, 1<<20, 4096, uuid.Nil, false); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, volume.JournalFile)
	j, err := journal.Create(path, journal.Options{Capacity: journal.MinCapacity})
	if err != nil {
		t.Fatal(err)
	}
	j.Close()
	if _, err := DiscardLocal(dir); err != nil {
		t.Fatal(err)
	}
	if j, err = journal.Open(path); err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if stopped, why := j.Stopped(); !stopped || !strings.Contains(why, "discard-local") {
		t.Fatalf("after resolve --discard-local the journal is stopped %v (%s); want stopped", stopped, why)
	}
}
