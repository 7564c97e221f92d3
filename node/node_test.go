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
	"github.com/ldmirror/ldmirror/internal/logbuf"
	"github.com/ldmirror/ldmirror/internal/pkitest"
	"github.com/ldmirror/ldmirror/internal/slapdtest"
	"github.com/ldmirror/ldmirror/ldapagent/probe"
	"github.com/ldmirror/ldmirror/pki"
)

func TestCreateAndLoadVolume(t *testing.T) {
	dir := t.TempDir()
	id := uuid.New()
	m, err := CreateVolume(dir, 1<<20, 4096, id, false)
	if err != nil {
		t.Fatal(err)
	}
	got, err := LoadMeta(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.VolumeUUID != id || got.Size != 1<<20 || got.BlockSize != 4096 || !got.Created.Equal(m.Created) {
		t.Fatalf("loaded %+v, created %+v", got, m)
	}
	st, err := os.Stat(filepath.Join(dir, BackingFile))
	if err != nil || st.Size() != 1<<20 {
		t.Fatalf("backing file: %v, %v", st, err)
	}
	if _, err := CreateVolume(dir, 1<<20, 4096, id, false); err == nil || !strings.Contains(err.Error(), "already holds a volume") {
		t.Fatalf("second create in the same dir: %v", err)
	}
}

func TestCreateVolumeRejects(t *testing.T) {
	for _, tc := range []struct {
		name      string
		size      int64
		blockSize int
		want      string
	}{
		{"size not a multiple of the block size", 1<<20 + 1, 4096, "not a positive multiple"},
		{"zero size", 0, 4096, "not a positive multiple"},
		{"bad block size", 1 << 20, 1000, "power of two"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := CreateVolume(t.TempDir(), tc.size, tc.blockSize, uuid.Nil, false)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestOpenRejects(t *testing.T) {
	secret := []byte("node-test-secret-0123456789")
	ca := pkitest.New(t)
	certB, certW := ca.Source("b", pki.RoleData), ca.Source("w", pki.RoleWitness)
	vol := func(t *testing.T) string {
		dir := t.TempDir()
		if _, err := CreateVolume(dir, 1<<20, 4096, uuid.Nil, false); err != nil {
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
		{"no volume", func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, MetaFile)) },
			Config{Role: RolePrimary, NodeID: "a"}, "run ldmirror init", ErrNoVolume},
		{"backing file of the wrong size", func(t *testing.T, dir string) {
			if err := os.Truncate(filepath.Join(dir, BackingFile), 1<<19); err != nil {
				t.Fatal(err)
			}
		}, Config{Role: RolePrimary, NodeID: "a"}, "is 524288 bytes, the volume is 1048576 bytes", blockdev.ErrWrongSize},
		{"corrupt metadata", func(t *testing.T, dir string) {
			if err := os.WriteFile(filepath.Join(dir, MetaFile), []byte("{not json"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, Config{Role: RolePrimary, NodeID: "a"}, "meta.json", nil},
		{"metadata from a newer version", func(t *testing.T, dir string) {
			if err := os.WriteFile(filepath.Join(dir, MetaFile), []byte(`{"version":9,"size_bytes":1048576,"block_size_bytes":4096}`), 0o600); err != nil {
				t.Fatal(err)
			}
		}, Config{Role: RolePrimary, NodeID: "a"}, "metadata version 9, this ldmirror reads version 1", nil},
		{"unknown role", nil, Config{Role: "leader", NodeID: "a"}, `role must be "primary" or "secondary", got "leader"`, nil},
		{"secondary without listen", nil, Config{Role: RoleSecondary, NodeID: "b", Secret: secret, InsecurePlaintext: true}, "needs --listen", nil},
		{"no node id", nil, Config{Role: RolePrimary}, "node id", nil},
		{"short secret", nil, Config{Role: RolePrimary, NodeID: "a", Peer: "127.0.0.1:1", Secret: []byte("short"), InsecurePlaintext: true}, "shared secret is 5 bytes, need at least 16", nil},
		{"no certificate and no plaintext", nil, Config{Role: RolePrimary, NodeID: "a", Peer: "127.0.0.1:1"}, "needs this host's TLS certificate", nil},
		{"another node's certificate", nil, Config{Role: RolePrimary, NodeID: "a", Peer: "127.0.0.1:1", TLS: certB}, "names data b; this host is data host a", nil},
		{"a witness's certificate", nil, Config{Role: RoleSecondary, NodeID: "w", Listen: "127.0.0.1:0", TLS: certW}, "names witness w; this host is data host w", nil},
		{"certificate and plaintext", nil, Config{Role: RoleSecondary, NodeID: "b", Listen: "127.0.0.1:0", TLS: certB, InsecurePlaintext: true, Secret: secret}, "exclude each other", nil},
		{"passthrough with a peer", nil, Config{Role: RolePrimary, NodeID: "a", Peer: "127.0.0.1:1", Secret: secret, InsecurePlaintext: true, Passthrough: true}, "drop --peer", nil},
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
	if _, err := CreateVolume(dir, 1<<20, 4096, uuid.Nil, false); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Dir: dir, Role: RolePrimary, NodeID: "a"}
	n, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if !n.Status().NoControlPlane {
		t.Error("status of a node without a control plane does not say so")
	}
	before, _ := os.ReadFile(filepath.Join(dir, MetaFile))
	if _, err := Open(cfg); err == nil || !strings.Contains(err.Error(), "in use by another ldmirror daemon") {
		t.Fatalf("second Open = %v, want the volume reported in use", err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, MetaFile))
	if string(before) != string(after) {
		t.Fatal("the second daemon changed the metadata")
	}
}

func TestGenerationsAcrossPrimaryLife(t *testing.T) {
	dir := t.TempDir()
	if _, err := CreateVolume(dir, 1<<20, 4096, uuid.Nil, false); err != nil {
		t.Fatal(err)
	}
	initial, _ := LoadMeta(dir)
	cfg := Config{Dir: dir, Role: RolePrimary, NodeID: "a", Peer: "127.0.0.1:1", Secret: []byte("node-test-secret-0123456789"), InsecurePlaintext: true}

	// A primary that is not stopped cleanly leaves primary_active set.
	n, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if m, _ := LoadMeta(dir); !m.PrimaryActive || m.Generations != initial.Generations {
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
	m, _ := LoadMeta(dir)
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
	if m2, _ := LoadMeta(dir); m2.PrimaryActive || m2.Generations != m.Generations {
		t.Fatalf("after a clean stop: %+v", m2)
	}
}

func TestBytes(t *testing.T) {
	for n, want := range map[uint64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 256 << 20: "256.0 MiB", 3 << 40: "3.0 TiB"} {
		if got := Bytes(n); got != want {
			t.Errorf("Bytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestStatusText(t *testing.T) {
	for _, tc := range []struct {
		name string
		st   Status
		want []string
	}{
		{"resyncing", Status{Role: RolePrimary, Link: LinkConnected, Replication: "resyncing", ResyncDone: 256, ResyncTotal: 1024,
			ResyncRate: 100 << 20, ResyncETASec: 3, BlockSize: 4096},
			[]string{"resyncing 25.0% (256 of 1024 blocks), 100.0 MiB/s, ETA 3 s"}},
		{"verifying", Status{Role: RolePrimary, Link: LinkConnected, Replication: "replicating", Mode: "sync", VerifyDone: 10, VerifyTotal: 40},
			[]string{"replicating (sync)", "verify       25.0% (10 of 40 blocks)"}},
		{"logging", Status{Role: RolePrimary, Link: LinkDisconnected, Peer: "b:7789", Replication: "logging", DirtyBlocks: 3, DirtyBytes: 12288, LastError: "peer link lost"},
			[]string{"disconnected to b:7789", "dirty        3 blocks (12.0 KiB)", "last error   peer link lost"}},
		{"no control plane", Status{Role: RolePrimary, NoControlPlane: true},
			[]string{"control      NONE: role from --role only, no split-brain protection"}},
		{"deposed primary", Status{Role: RolePrimary, Link: LinkConnected, Replication: ReplicationFenced, Epoch: 7, ServingEpoch: 5, NamedPrimary: "b", RaftLeader: "w"},
			[]string{"replication  fenced: writes refused", "control      epoch 7 (this host still serves epoch 5: deposed, stepping down), primary b, raft leader w"}},
		{"primary in its epoch", Status{Role: RolePrimary, Link: LinkConnected, Replication: ReplicationSuspended, Epoch: 7, ServingEpoch: 7, NamedPrimary: "a"},
			[]string{"replication  suspended", "control      epoch 7, primary a, raft leader none (no quorum?)"}},
		{"secondary", Status{Role: RoleSecondary, Link: LinkConnected, PeerNode: "a", Replication: "replicating", WritesApplied: 5, AppliedSeq: 9},
			[]string{"(node a)", "applied      5 writes, 0 B, up to seq 9"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b strings.Builder
			tc.st.WriteText(&b)
			for _, w := range tc.want {
				if !strings.Contains(b.String(), w) {
					t.Errorf("status text lacks %q:\n%s", w, b.String())
				}
			}
		})
	}
}

// A primary that crashed before the scoreboard existed does not know what
// its peer misses: everything is out of sync, and stays so across a restart
// until a resync copied it.
func TestCrashWithoutScoreboardResyncsEverything(t *testing.T) {
	dir := t.TempDir()
	if _, err := CreateVolume(dir, 1<<20, 4096, uuid.Nil, false); err != nil {
		t.Fatal(err)
	}
	m, _ := LoadMeta(dir)
	m.PrimaryActive = true
	if err := writeMeta(dir, m); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Dir: dir, Role: RolePrimary, NodeID: "a", Peer: "127.0.0.1:1", Secret: []byte("node-test-secret-0123456789"), InsecurePlaintext: true}
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
	if _, err := CreateVolume(dir, 1<<20, 4096, uuid.Nil, false); err != nil {
		t.Fatal(err)
	}
	logs := &logbuf.Buffer{}
	n, err := Open(Config{
		Dir: dir, Role: RoleSecondary, NodeID: "b", Listen: "127.0.0.1:0", Secret: []byte("node-test-secret-0123456789"), InsecurePlaintext: true,
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
