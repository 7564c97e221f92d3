package main

import (
	"strings"
	"testing"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/internal/bytesize"
	"github.com/ldmirror/ldmirror/ldapagent/agent"
	"github.com/ldmirror/ldmirror/mirror"
	"github.com/ldmirror/ldmirror/node"
)

func TestBytes(t *testing.T) {
	for n, want := range map[uint64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 256 << 20: "256.0 MiB", 3 << 40: "3.0 TiB"} {
		if got := bytesize.Format(n); got != want {
			t.Errorf("bytesize.Format(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestStatusText(t *testing.T) {
	for _, tc := range []struct {
		name string
		st   node.Status
		want []string
	}{
		{"resyncing", node.Status{Role: cluster.RolePrimary, Link: node.LinkConnected, Replication: mirror.StateResyncing, ResyncDone: 256, ResyncTotal: 1024,
			ResyncRate: 100 << 20, ResyncETASec: 3, BlockSize: 4096},
			[]string{"resyncing 25.0% (256 of 1024 blocks), 100.0 MiB/s, ETA 3 s"}},
		{"verifying", node.Status{Role: cluster.RolePrimary, Link: node.LinkConnected, Replication: mirror.StateReplicating, Mode: "sync", VerifyDone: 10, VerifyTotal: 40},
			[]string{"replicating (sync)", "verify       25.0% (10 of 40 blocks)"}},
		{"logging", node.Status{Role: cluster.RolePrimary, Link: node.LinkDisconnected, Peer: "b:7789", Replication: mirror.StateLogging, DirtyBlocks: 3, DirtyBytes: 12288, LastError: "peer link lost"},
			[]string{"disconnected to b:7789", "dirty        3 blocks (12.0 KiB)", "last error   peer link lost"}},
		{"no control plane", node.Status{Role: cluster.RolePrimary, NoControlPlane: true},
			[]string{"control      NONE: role from --role only, no split-brain protection"}},
		{"deposed primary", node.Status{Role: cluster.RolePrimary, Link: node.LinkConnected, Replication: node.ReplicationFenced, Epoch: 7, ServingEpoch: 5, NamedPrimary: "b", RaftLeader: "w"},
			[]string{"replication  fenced: writes refused", "control      epoch 7 (this host still serves epoch 5: deposed, stepping down), primary b, raft leader w"}},
		{"primary in its epoch", node.Status{Role: cluster.RolePrimary, Link: node.LinkConnected, Replication: node.ReplicationSuspended, Epoch: 7, ServingEpoch: 7, NamedPrimary: "a"},
			[]string{"replication  suspended", "control      epoch 7, primary a, raft leader none (no quorum?)"}},
		{"secondary", node.Status{Role: cluster.RoleSecondary, Link: node.LinkConnected, PeerNode: "a", Replication: mirror.StateReplicating, WritesApplied: 5, AppliedSeq: 9},
			[]string{"(node a)", "applied      5 writes, 0 B, up to seq 9"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b strings.Builder
			writeStatus(&b, tc.st)
			for _, w := range tc.want {
				if !strings.Contains(b.String(), w) {
					t.Errorf("status text lacks %q:\n%s", w, b.String())
				}
			}
		})
	}
}

// TestAgentStatusText: a failed agent's status names the hook, its error
// and the tail of its output.
func TestAgentStatusText(t *testing.T) {
	hook := agent.HookResult{Sequence: "promote", Name: "start-slapd", Error: "exit status 1", DurationMs: 12}
	st := agent.Status{Node: "a", State: agent.StateFailed, Role: "primary", Epoch: 1, Primary: "a",
		LastHooks: []agent.HookResult{hook},
		Failure:   &agent.Failure{Sequence: "promote", Hook: "start-slapd", Error: "exit status 1", Tail: []string{"start-slapd: simulated failure"}, Epoch: 1}}
	var out strings.Builder
	writeAgentStatus(&out, st)
	for _, want := range []string{"agent        failed (primary, epoch 1", `FAILED       promote hook "start-slapd": exit status 1`,
		"| start-slapd: simulated failure", "hook         promote/start-slapd: exit status 1 (12 ms)"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("text status lacks %q:\n%s", want, out.String())
		}
	}
}
