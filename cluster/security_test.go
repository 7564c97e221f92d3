package cluster

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/internal/pkitest"
	"github.com/ldmirror/ldmirror/pki"
)

// TestForeignCA: a host with a certificate of another CA cannot join, and
// nothing it sent is applied.
func TestForeignCA(t *testing.T) {
	ms := startTrio(t, "a", nil)
	ctx := ctxFor(t, 10*time.Second)
	before, err := ms["a"].c.Consistent(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, pkitest.New(t), "x", true)
	x := startMember(t, cfg)
	if err := x.c.Bootstrap(ctxFor(t, 5*time.Second)); err != nil {
		t.Fatalf("intruder's own bootstrap: %v", err)
	}
	err = x.c.Join(ctx, ms["b"].c.Addr())
	if !errors.Is(err, ErrAuth) {
		t.Fatalf("join with another CA's certificate: %v, want ErrAuth", err)
	}
	after, err := ms["a"].c.Consistent(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := after.Host("x"); ok || len(after.Hosts) != len(before.Hosts) {
		t.Fatalf("intruder registered: %+v", after)
	}
	members, err := ms["a"].c.Members(ctx)
	if err != nil || len(members) != 3 {
		t.Fatalf("members after intrusion: %+v, %v", members, err)
	}
	if _, ok := x.c.State().Host("a"); ok {
		t.Fatal("intruder learned the cluster's state")
	}
}

// rawCall sends req to the member at addr as the node creds names, over
// the cluster port's RPC channel, and returns the member's answer.
func rawCall(t *testing.T, creds *pki.Source, addr string, req rpcRequest) error {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := newMux(ln, ln.Addr().String(), creds, 2*time.Second, testLogger())
	defer m.close()
	conn, err := m.dial(ctxFor(t, 5*time.Second), addr, chanRPC)
	if err != nil {
		return err
	}
	defer conn.Close()
	req.TimeoutMS = 5000
	if err := writeMsg(conn, req); err != nil {
		t.Fatal(err)
	}
	var resp rpcResponse
	if err := readMsg(conn, &resp); err != nil {
		t.Fatal(err)
	}
	return decodeError(resp.Code, resp.Err)
}

// TestSenderIdentity: the witness cannot submit data-host state in a data
// host's name (mark-outdated, transfer, set-disk, ack-seq, report-ready),
// nor can a node whose certificate names another node join or act as it;
// a member whose certificate names another node does not start. The state
// is what the data hosts made it.
func TestSenderIdentity(t *testing.T) {
	ms := startTrio(t, "a", nil)
	ctx := ctxFor(t, 30*time.Second)
	a, w := ms["a"].c, ms["w"].c
	makePrimary(t, ctx, ms, a, "a")
	before, err := a.Consistent(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []command{
		{Op: opMarkOutdated, By: "a", Node: "b", Epoch: 1},
		{Op: opTransfer, By: "a", Node: "b", Epoch: 1},
		{Op: opSetDisk, Node: "b", Disk: DiskOutdated, Epoch: 1},
		{Op: opAckSeq, Node: "b", Seq: 7, Epoch: 1},
		{Op: opReportReady, Node: "a", Ready: false, Detail: "forged"},
		// Claiming to be a in the stamp itself: the leader overwrites it.
		{Op: opMarkOutdated, By: "a", Node: "b", Epoch: 1, Sender: "a"},
	} {
		if _, err := w.submit(ctx, cmd); !errors.Is(err, ErrNotAuthorized) {
			t.Fatalf("witness submits %s in a's name: %v, want ErrNotAuthorized", cmd.Op, err)
		}
	}

	// c holds a data-host certificate of the cluster's CA, for c.
	c := ms["a"].ca.Source("c", pki.RoleData)
	leader := func() string { _, addr := a.Leader(); return addr }
	if err := rawCall(t, c, leader(), rpcRequest{Op: rpcJoin, Member: Member{ID: "b", Addr: "127.0.0.1:1"}}); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("c joins as b: %v, want ErrNotAuthorized", err)
	}
	forged, err := command{Op: opMarkOutdated, By: "a", Node: "b", Epoch: 1}.encode()
	if err != nil {
		t.Fatal(err)
	}
	if err := rawCall(t, c, leader(), rpcRequest{Op: rpcApply, Command: forged, Forwarded: true}); !errors.Is(err, ErrNotAuthorized) {
		t.Fatalf("c marks b outdated in a's name: %v, want ErrNotAuthorized", err)
	}
	// Nor may c talk raft: it is not in the configuration.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cm := newMux(ln, ln.Addr().String(), c, 2*time.Second, testLogger())
	defer cm.close()
	if _, err := cm.dial(ctx, a.Addr(), chanRaft); !errors.Is(err, ErrAuth) {
		t.Fatalf("raft connection from c: %v, want ErrAuth", err)
	}
	cfg := testConfig(t, ms["a"].ca, "b", false)
	cfg.TLS = c
	if _, err := Open(cfg); err == nil || !strings.Contains(err.Error(), "names data c, this member is data b") {
		t.Fatalf("member b with c's certificate: %v", err)
	}

	after, err := a.Consistent(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(stripIndex(after)) != fmt.Sprint(stripIndex(before)) {
		t.Fatalf("refused commands changed the state:\nbefore %+v\n after %+v", before, after)
	}
	// The witness still does what an operator may.
	if _, err := w.Demote(ctx, "a", 1); err != nil {
		t.Fatalf("demote through the witness: %v", err)
	}
}
