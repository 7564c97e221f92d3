package cluster

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/hashicorp/raft"
	"github.com/ldmirror/ldmirror/pki"
)

// The forwarding RPC. Raft applies commands only on the leader, so a member
// that is not the leader sends the command to it over the authenticated
// cluster port (channel 'C') and relays the answer. One request per
// connection: control traffic is a handful of commands per role change, and
// a fresh connection never carries state from a previous leader.
//
// Frames are a 4-byte big-endian length and a JSON body.

type rpcOp string

const (
	rpcApply  rpcOp = "apply"  // apply Command
	rpcRead   rpcOp = "read"   // barrier, then return the state
	rpcJoin   rpcOp = "join"   // register Member and add it as a voter
	rpcRemove rpcOp = "remove" // unregister Node and remove it from raft
	rpcPing   rpcOp = "ping"   // are you there (leadership hand-off probe)
)

// maxRPC bounds a request or response body.
const maxRPC = 1 << 20

// maxRPCTimeout bounds how long a forwarded request may hold the leader.
const maxRPCTimeout = time.Minute

type rpcRequest struct {
	Op      rpcOp  `json:"op"`
	Command []byte `json:"command,omitempty"`
	Member  Member `json:"member,omitzero"`
	Node    string `json:"node,omitempty"`
	// Forwarded requests must be served by the leader itself; a member that
	// is not the leader answers errNotLeader instead of forwarding again,
	// so a stale leader hint cannot make requests loop.
	Forwarded bool `json:"forwarded,omitempty"`
	// TimeoutMS is what is left of the sender's context.
	TimeoutMS int64 `json:"timeout_ms"`
}

type rpcResponse struct {
	// Leader is the leader's address, with errNotLeader from a member
	// asked directly (not forwarded) that does not lead.
	Leader  string       `json:"leader,omitempty"`
	Epoch   Epoch        `json:"epoch"`
	Primary string       `json:"primary,omitempty"`
	State   *VolumeState `json:"state,omitempty"`
	// Code names the sentinel error Err wraps, if any.
	Code string `json:"code,omitempty"`
	Err  string `json:"err,omitempty"`
}

// Internal errors that make the forwarding loop try again: none of them
// means the command was submitted.
var (
	errNotLeader   = errors.New("not the raft leader")
	errNoLeader    = errors.New("no raft leader known")
	errUnreachable = errors.New("leader unreachable")
)

func retryable(err error) bool {
	return errors.Is(err, errNotLeader) || errors.Is(err, errNoLeader) || errors.Is(err, errUnreachable)
}

// errorCodes lets sentinel errors cross the wire.
var errorCodes = map[string]error{
	"not-uptodate":    ErrNotUpToDate,
	"stale-epoch":     ErrStaleEpoch,
	"not-primary":     ErrNotPrimary,
	"no-quorum":       ErrNoQuorum,
	"behind":          ErrBehind,
	"unknown-node":    ErrUnknownNode,
	"witness":         ErrWitness,
	"is-primary":      ErrIsPrimary,
	"cluster-full":    ErrClusterFull,
	"invalid-command": ErrInvalidCommand,
	"not-authorized":  ErrNotAuthorized,
	"closed":          ErrClosed,
	"not-leader":      errNotLeader,
	"no-leader":       errNoLeader,
}

func encodeError(err error) (code, msg string) {
	if err == nil {
		return "", ""
	}
	for c, e := range errorCodes {
		if errors.Is(err, e) {
			return c, err.Error()
		}
	}
	return "", err.Error()
}

// remoteError is an error returned by the leader: its text, and the
// sentinel it wrapped there so errors.Is works here too.
type remoteError struct {
	msg      string
	sentinel error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.sentinel }

func decodeError(code, msg string) error {
	if code == "" && msg == "" {
		return nil
	}
	return &remoteError{msg: msg, sentinel: errorCodes[code]}
}

func writeMsg(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(b) > maxRPC {
		return fmt.Errorf("rpc message of %d bytes exceeds %d", len(b), maxRPC)
	}
	buf := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(b)), uint32(len(b)))
	_, err = w.Write(append(buf, b...))
	return err
}

func readMsg(r io.Reader, v any) error {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return err
	}
	size := binary.BigEndian.Uint32(n[:])
	if size > maxRPC {
		return fmt.Errorf("rpc message of %d bytes exceeds %d", size, maxRPC)
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(r, b); err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}

// call sends req to the member at addr and returns its answer. Failing to
// connect or send is errUnreachable (nothing was submitted); losing the
// answer after sending is ErrNoQuorum, since the leader may have committed.
func (c *Cluster) call(ctx context.Context, addr string, req rpcRequest) (rpcResponse, error) {
	conn, err := c.mux.dial(ctx, addr, chanRPC)
	if err != nil {
		if errors.Is(err, ErrAuth) || errors.Is(err, ErrClosed) {
			return rpcResponse{}, err
		}
		return rpcResponse{}, fmt.Errorf("%w: %s: %v", errUnreachable, addr, err)
	}
	return c.callOn(ctx, conn, addr, req)
}

// relayAfter is how long a member waits for a direct connection to the
// leader before it also tries through the other members (docs/cluster.md,
// "Failure matrix"): on a LAN a connection takes milliseconds, and a
// fence's attempt lasts a second.
const relayAfter = 250 * time.Millisecond

// callLeader sends req to the leader at addr ("": unknown here) and
// returns its answer. The connection is made directly or, if that has not
// succeeded within relayAfter (at once if addr is unknown or refuses),
// through a tunnel by another voter to its leader (mux.relay): whichever
// authenticates first carries the request, so it is sent once. Either way
// the leader authenticates this member's own certificate.
func (c *Cluster) callLeader(ctx context.Context, addr string, req rpcRequest) (rpcResponse, error) {
	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	d := &leaderDial{c: c, ctx: dctx, cancel: cancel, addr: addr, vias: c.relays(addr)}
	d.results = make(chan dialed, 1+len(d.vias))
	if addr != "" {
		d.start("")
	} else {
		d.relay()
	}
	timer := time.NewTimer(relayAfter)
	defer timer.Stop()
	var errs []error
	for d.running > 0 {
		select {
		case <-timer.C:
			d.relay()
		case r := <-d.results:
			d.running--
			if r.err == nil {
				d.abandon()
				label := addr
				if r.via != "" {
					label = "the leader through " + r.via
					c.log.Info("cluster: leader not reachable directly: request sent through a tunnel", "via", r.via, "leader", addr, "op", req.Op)
				}
				return c.callOn(ctx, r.conn, label, req)
			}
			if errors.Is(r.err, ErrClosed) || r.via == "" && errors.Is(r.err, ErrAuth) {
				// Closing, or the leader refused this member's
				// certificate: no path will do better.
				d.abandon()
				return rpcResponse{}, r.err
			}
			errs = append(errs, r.err)
			if r.via == "" {
				d.relay()
			}
		}
	}
	err := errors.Join(errs...)
	switch {
	case len(errs) == 0:
		return rpcResponse{}, errNoLeader
	case addr == "" && allNoTunnel(errs):
		return rpcResponse{}, fmt.Errorf("%w: %v", errNoLeader, err)
	}
	return rpcResponse{}, fmt.Errorf("%w: %v", errUnreachable, err)
}

// dialed is one path's dial to the leader: direct (via "") or through the
// tunnel of another member.
type dialed struct {
	conn net.Conn
	via  string
	err  error
}

// leaderDial races the dials of callLeader: the direct one first, the
// tunnels once it failed or relayAfter passed.
type leaderDial struct {
	c       *Cluster
	ctx     context.Context
	cancel  context.CancelFunc
	addr    string
	vias    []string
	results chan dialed
	running int
	relayed bool
}

func (d *leaderDial) start(via string) {
	d.running++
	go func() {
		r := dialed{via: via}
		if via == "" {
			r.conn, r.err = d.c.mux.dial(d.ctx, d.addr, chanRPC)
		} else {
			r.conn, r.err = d.c.mux.dialVia(d.ctx, via, chanRPC)
		}
		d.results <- r
	}()
}

// relay starts the dials through the tunnels, once.
func (d *leaderDial) relay() {
	if d.relayed {
		return
	}
	d.relayed = true
	for _, via := range d.vias {
		d.start(via)
	}
}

// abandon stops the dials still running and closes what they make.
func (d *leaderDial) abandon() {
	d.cancel()
	go func(n int) {
		for range n {
			if late := <-d.results; late.conn != nil {
				late.conn.Close()
			}
		}
	}(d.running)
}

// allNoTunnel reports whether every error is a relay's refusal.
func allNoTunnel(errs []error) bool {
	for _, err := range errs {
		if !errors.Is(err, errNoTunnel) {
			return false
		}
	}
	return true
}

// relays lists the voters other than this member and the leader at addr,
// through which a tunnel to the leader may go.
func (c *Cluster) relays(leader string) []string {
	var out []string
	for _, s := range c.raft.GetConfiguration().Configuration().Servers {
		if s.ID == raft.ServerID(c.cfg.NodeID) || string(s.Address) == leader || s.Suffrage != raft.Voter {
			continue
		}
		out = append(out, string(s.Address))
	}
	return out
}

// tunnelTo is where a tunnel that the member from asked for goes: this
// member's leader, which must not be from (it would know).
func (c *Cluster) tunnelTo(from pki.Identity) (string, error) {
	addr, id := c.raft.LeaderWithID()
	switch {
	case addr == "":
		return "", errNoLeader
	case string(id) == from.ID:
		return "", fmt.Errorf("%s is the leader here", from.ID)
	}
	return string(addr), nil
}

// callOn sends req on conn, a connection to the member named label, and
// returns its answer. Losing the answer after sending is ErrNoQuorum,
// since the leader may have committed.
func (c *Cluster) callOn(ctx context.Context, conn net.Conn, label string, req rpcRequest) (rpcResponse, error) {
	var resp rpcResponse
	if dl, ok := ctx.Deadline(); ok {
		req.TimeoutMS = max(time.Until(dl).Milliseconds(), 1)
	} else {
		req.TimeoutMS = maxRPCTimeout.Milliseconds()
	}
	defer conn.Close()
	defer context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })()
	if err := writeMsg(conn, req); err != nil {
		return resp, fmt.Errorf("%w: send to %s: %v", errUnreachable, label, err)
	}
	if err := readMsg(conn, &resp); err != nil {
		return resp, fmt.Errorf("%w: no answer from %s (the command may still commit): %v", ErrNoQuorum, label, err)
	}
	return resp, decodeError(resp.Code, resp.Err)
}

// serveRPC answers one request on a connection from the member from.
func (c *Cluster) serveRPC(conn net.Conn, from pki.Identity) {
	var req rpcRequest
	if err := conn.SetReadDeadline(time.Now().Add(c.cfg.DialTimeout)); err != nil {
		return
	}
	if err := readMsg(conn, &req); err != nil {
		c.log.Warn("cluster: bad rpc request", "remote", conn.RemoteAddr().String(), "err", err)
		return
	}
	timeout := min(time.Duration(req.TimeoutMS)*time.Millisecond, maxRPCTimeout)
	ctx, cancel := context.WithTimeout(c.ctx, timeout)
	defer cancel()
	resp, err := c.handleRPC(ctx, req, from)
	resp.Code, resp.Err = encodeError(err)
	_ = conn.SetWriteDeadline(time.Now().Add(c.cfg.DialTimeout))
	if err := writeMsg(conn, resp); err != nil {
		c.log.Warn("cluster: rpc reply lost", "remote", conn.RemoteAddr().String(), "op", req.Op, "err", err)
	}
}

// handleRPC serves req from the member from. Only the leader serves a
// request, for the member that sent it: a member never relays another's
// request, since the leader could then not tell who sent it. A member
// that does not lead answers errNotLeader, naming the leader for a host
// that asked it directly (a joining host, which knows no leader yet).
func (c *Cluster) handleRPC(ctx context.Context, req rpcRequest, from pki.Identity) (rpcResponse, error) {
	if req.Op == rpcPing {
		return rpcResponse{}, nil
	}
	if !c.isLeader() {
		var resp rpcResponse
		if !req.Forwarded {
			addr, _ := c.raft.LeaderWithID()
			resp.Leader = string(addr)
		}
		return resp, errNotLeader
	}
	return c.leaderDo(ctx, req, from)
}
