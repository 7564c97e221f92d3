package cluster

import (
	"errors"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/ldmirror/ldmirror/internal/poll"
	"github.com/ldmirror/ldmirror/pki"
)

// leadBy makes id the raft leader of the trio.
func leadBy(t *testing.T, ms map[string]*member, id string) {
	t.Helper()
	poll.Until(t, 10*time.Second, id+" to lead", func() bool {
		lid, _ := ms["w"].c.Leader()
		if lid == id {
			for _, m := range ms {
				if l, _ := m.c.Leader(); l != id {
					return false
				}
			}
			return true
		}
		for _, m := range ms {
			if m.c.isLeader() {
				_ = m.c.raft.LeadershipTransferToServer(raft.ServerID(id), raft.ServerAddress(ms[id].c.Addr())).Error()
			}
		}
		return false
	})
}

// TestPartitionBetweenDataHostsLeaderOnSecondary is docs/reliability.md's
// finding 3 in process: b leads raft, a is primary, and the link between a
// and b goes down (both still reach w). a cannot reach the leader, and w,
// which still hears b, refuses a's pre-vote; a's "b outdated" commits
// through a tunnel that w relays to b, authorized as a's (the relay could
// not send it: w may not act for primary a), and b is then not promotable.
func TestPartitionBetweenDataHostsLeaderOnSecondary(t *testing.T) {
	ms := startTrio(t, "b", nil)
	ctx := ctxFor(t, 30*time.Second)
	a, b, w := ms["a"].c, ms["b"].c, ms["w"].c
	makePrimary(t, ctx, ms, a, "a")
	leadBy(t, ms, "b")

	a.mux.cutLink(b.Addr())
	b.mux.cutLink(a.Addr())
	// a stops hearing b: it no longer knows a leader it can reach.
	poll.Until(t, 10*time.Second, "a to lose the leader", func() bool { id, _ := a.Leader(); return id != "b" })

	start := time.Now()
	fctx := ctxFor(t, 5*time.Second)
	if err := a.MarkPeerOutdated(fctx, 1, "b"); err != nil {
		t.Fatalf("a marks b outdated with the a-b link down and b leading: %v", err)
	}
	t.Logf("committed %v after the first attempt", time.Since(start))
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("the commit took %v", took)
	}
	if id, _ := w.Leader(); id != "b" {
		t.Fatalf("leader %q: the commit did not go through b", id)
	}
	s, err := w.Consistent(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h, _ := s.Host("b"); h.Disk != DiskOutdated || s.Primary != "a" {
		t.Fatalf("after the commit: primary %q, b %s; want a, b outdated", s.Primary, h.Disk)
	}
	if _, err := w.Promote(ctx, "b", false, ""); !errors.Is(err, ErrNotUpToDate) {
		t.Fatalf("promote b: %v, want ErrNotUpToDate", err)
	}
	// The relay passes bytes: w still may not act for primary a itself.
	if _, err := w.submit(ctx, command{Op: opMarkOutdated, By: "a", Node: "b", Epoch: 1}); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("w marks b outdated in a's name: %v, want ErrNotAuthorized", err)
	}

	a.mux.healLinks()
	b.mux.healLinks()
	converged(t, ms, func(s VolumeState) bool { h, _ := s.Host("b"); return h.Disk == DiskOutdated })
}

// TestTunnelRefusals: only a member of the raft configuration gets a
// tunnel, and it goes only to the relay's leader: a certificate of the CA
// that is not a member is refused, as on the raft channel.
func TestTunnelRefusals(t *testing.T) {
	ms := startTrio(t, "a", nil)
	ctx := ctxFor(t, 10*time.Second)
	leadBy(t, ms, "a")
	c := ms["a"].ca.Source("c", pki.RoleData)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cm := newMux(ln, ln.Addr().String(), c, 2*time.Second, testLogger())
	defer cm.close()
	if _, err := cm.dialVia(ctx, ms["w"].c.Addr(), chanRPC); !errors.Is(err, ErrAuth) {
		t.Fatalf("tunnel for c: %v, want ErrAuth", err)
	}
	// The leader is told that it leads.
	if _, err := ms["a"].c.mux.dialVia(ctx, ms["w"].c.Addr(), chanRPC); !errors.Is(err, errNoTunnel) {
		t.Fatalf("tunnel for the leader: %v, want errNoTunnel", err)
	}
	// A member gets one, to the leader, which serves it as that member.
	conn, err := ms["b"].c.mux.dialVia(ctx, ms["w"].c.Addr(), chanRPC)
	if err != nil {
		t.Fatalf("tunnel for b: %v", err)
	}
	resp, err := ms["b"].c.callOn(ctx, conn, "the leader through w", rpcRequest{Op: rpcRead, Forwarded: true})
	if err != nil || resp.State == nil {
		t.Fatalf("read through the tunnel: %+v, %v", resp, err)
	}
}
