package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/events"
	"github.com/ldmirror/ldmirror/ldapagent/agent"
	"github.com/ldmirror/ldmirror/node"
)

// ErrNoProcess reports that nothing answers on the control socket.
var ErrNoProcess = errors.New("no ldmirror process answers")

// Client talks to the control socket at one path.
type Client struct {
	path string
	http *http.Client
}

// NewClient returns a client of the control socket at path.
func NewClient(path string) *Client {
	return &Client{path: path, http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}}
}

// Path is the socket's path.
func (c *Client) Path() string { return c.path }

// Status is the data host's status.
func (c *Client) Status(ctx context.Context) (node.Status, error) {
	var st node.Status
	return st, c.do(ctx, http.MethodGet, "/status", nil, &st)
}

// Verify compares the volume with the peer and resyncs what differs; it
// returns when both ended.
func (c *Client) Verify(ctx context.Context) (node.VerifyResult, error) {
	var res node.VerifyResult
	return res, c.do(ctx, http.MethodPost, "/verify", nil, &res)
}

// Resync copies the out-of-sync blocks to the peer now; full marks every
// block first, checksum sends only those that differ.
func (c *Client) Resync(ctx context.Context, full, checksum bool) (node.ResyncResult, error) {
	q := url.Values{}
	if full {
		q.Set("full", "1")
	}
	if checksum {
		q.Set("checksum", "1")
	}
	var res node.ResyncResult
	return res, c.do(ctx, http.MethodPost, "/resync?"+q.Encode(), nil, &res)
}

// Swap hands the primary role to the peer.
// force swaps although the volume is in use on the primary.
func (c *Client) Swap(ctx context.Context, force bool) (SwapResult, error) {
	route := "/swap"
	if force {
		route += "?force=1"
	}
	var res SwapResult
	return res, c.do(ctx, http.MethodPost, route, nil, &res)
}

// AttachDisk takes back the host's disk after it failed and was repaired;
// full has the primary resync every block.
func (c *Client) AttachDisk(ctx context.Context, full bool) error {
	route := "/attach-disk"
	if full {
		route += "?full=1"
	}
	return c.do(ctx, http.MethodPost, route, nil, &struct{}{})
}

// RetryAgent runs the LDAP agent's failed hook sequence again and returns
// the agent's state.
func (c *Client) RetryAgent(ctx context.Context) (agent.Status, error) {
	var st agent.Status
	return st, c.do(ctx, http.MethodPost, "/agent/retry", nil, &st)
}

// Attach binds the primary's export to a loop device and returns it.
func (c *Client) Attach(ctx context.Context) (string, error) {
	var res AttachResult
	return res.Device, c.do(ctx, http.MethodPost, "/attach", nil, &res)
}

// PeerPID is the process ID of the process on the socket (SO_PEERCRED).
func (c *Client) PeerPID(ctx context.Context) (int, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.path)
	if err != nil {
		return 0, fmt.Errorf("%w on %s: %w", ErrNoProcess, c.path, err)
	}
	defer conn.Close()
	raw, err := conn.(*net.UnixConn).SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) { cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); err != nil {
		return 0, err
	}
	if credErr != nil {
		return 0, fmt.Errorf("peer of %s: %w", c.path, credErr)
	}
	return int(cred.Pid), nil
}

// Stop makes the process stop, as SIGTERM does; it does not wait for it.
func (c *Client) Stop(ctx context.Context) error {
	var res struct{}
	return c.do(ctx, http.MethodPost, "/stop", nil, &res)
}

// Reload makes the process apply its resource file's changes and re-read
// its certificate, as SIGHUP does, and says what it did.
func (c *Client) Reload(ctx context.Context) (Reload, error) {
	var res Reload
	return res, c.do(ctx, http.MethodPost, "/reload", nil, &res)
}

// Events passes each event of the host's stream to fn until the stream
// ends (the daemon stops: a stopping event comes last), ctx ends or fn
// fails. now ends the stream after the state; progress sets how often a
// running resync reports (0: the daemon's default).
func (c *Client) Events(ctx context.Context, now bool, progress time.Duration, fn func(events.Event) error) error {
	q := url.Values{"progress_ms": {fmt.Sprint(progress.Milliseconds())}}
	if now {
		q.Set("now", "1")
	}
	resp, err := c.send(ctx, http.MethodGet, "/events?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var e events.Event
		if err := dec.Decode(&e); err == io.EOF {
			return nil
		} else if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("events from %s: %w", c.path, err)
		}
		if err := fn(e); err != nil {
			return err
		}
	}
}

// Cluster is the member's view of the control plane; consistent reads the
// volume state through the leader. timeout bounds the member's reads.
func (c *Client) Cluster(ctx context.Context, consistent bool, timeout time.Duration) (ClusterView, error) {
	q := url.Values{"timeout_ms": {fmt.Sprint(timeout.Milliseconds())}}
	if consistent {
		q.Set("consistent", "1")
	}
	var v ClusterView
	return v, c.do(ctx, http.MethodGet, "/cluster?"+q.Encode(), nil, &v)
}

// Bootstrap makes the member the first voter of a new cluster.
func (c *Client) Bootstrap(ctx context.Context, timeout time.Duration) error {
	_, err := c.command(ctx, "/cluster/bootstrap", Request{}, timeout)
	return err
}

// Join makes the member join the cluster through the member at addr.
func (c *Client) Join(ctx context.Context, addr string, timeout time.Duration) error {
	_, err := c.command(ctx, "/cluster/join", Request{Addr: addr}, timeout)
	return err
}

// Remove takes node out of the cluster.
func (c *Client) Remove(ctx context.Context, node string, timeout time.Duration) error {
	_, err := c.command(ctx, "/cluster/remove", Request{Node: node}, timeout)
	return err
}

// Promote makes node primary in a new epoch, which it returns.
func (c *Client) Promote(ctx context.Context, node string, force bool, reason string, timeout time.Duration) (cluster.Epoch, error) {
	r, err := c.PromoteReply(ctx, node, force, reason, timeout)
	return r.Epoch, err
}

// PromoteReply is Promote with the whole reply: with a forced promotion
// of a resync's target, through its own socket, what is lost.
func (c *Client) PromoteReply(ctx context.Context, node string, force bool, reason string, timeout time.Duration) (Reply, error) {
	return c.command(ctx, "/cluster/promote", Request{Node: node, Force: force, Reason: reason}, timeout)
}

// AbortResync discards the resync the host, a resync's target, staged.
func (c *Client) AbortResync(ctx context.Context) (node.AbortResult, error) {
	var res node.AbortResult
	return res, c.do(ctx, http.MethodPost, "/resync?abort=1", nil, &res)
}

// Demote ends node's tenure as primary of epoch (0: the current one) and
// returns the new epoch.
// force demotes a host whose volume is in use (a data host's own socket
// checks that of itself).
func (c *Client) Demote(ctx context.Context, node string, epoch cluster.Epoch, force bool, timeout time.Duration) (cluster.Epoch, error) {
	r, err := c.command(ctx, "/cluster/demote", Request{Node: node, Epoch: epoch, Force: force}, timeout)
	return r.Epoch, err
}

// command posts req with timeout as the member's deadline; the client
// waits a little longer, since the member answers at its deadline.
func (c *Client) command(ctx context.Context, route string, req Request, timeout time.Duration) (Reply, error) {
	if timeout <= 0 {
		return Reply{}, fmt.Errorf("timeout %v: must be positive", timeout)
	}
	req.TimeoutMS = timeout.Milliseconds()
	ctx, cancel := context.WithTimeout(ctx, timeout+5*time.Second)
	defer cancel()
	var r Reply
	return r, c.do(ctx, http.MethodPost, route, req, &r)
}

func (c *Client) do(ctx context.Context, method, route string, body, out any) error {
	resp, err := c.send(ctx, method, route, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(out)
}

// send sends a request and returns the response if it is 200 OK, or the
// error it carries.
func (c *Client) send(ctx context.Context, method, route string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://ldmirror"+route, rd)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("the process on %s did not answer in time: %w", c.path, err)
		}
		return nil, fmt.Errorf("%w on %s: %w", ErrNoProcess, c.path, err)
	}
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	defer resp.Body.Close()
	var e Error
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&e); err != nil || e.Message == "" {
		return nil, fmt.Errorf("control socket %s: %s", c.path, resp.Status)
	}
	return nil, errorOf(e)
}
