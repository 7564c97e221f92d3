package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/node"
	"github.com/urfave/cli/v2"
)

// This file is the control plane in the CLI: a member process (`ldmirror
// witness`, and the hidden `ldmirror cluster member` for a data host until
// the daemon embeds one), its control socket, and the operator commands
// that talk to that socket (`cluster status|bootstrap|join|remove`,
// `promote`, `demote`).
//
// To embed a member in another command (the daemon):
//
//	flags = append(flags, memberFlags("cluster-")...)
//	m, err := startMember(c, "cluster-", memberOptions{NodeID: id, DataDir: filepath.Join(dir, "raft"), Secret: secret, Logger: log})
//	defer m.Close()
//	// serve m.Handler() on a control socket (its routes are under /cluster),
//	// and return <-m.Fatal() as the command's error.
//
// flagLogger, flagNodeID and readSecretFile read --log-level, --node-id and
// --secret-file the same way for every command that has them.

// clusterControlFile is the member's control socket under --data-dir.
const clusterControlFile = "control.sock"

// defaultCommandTimeout bounds a control command: how long the member may
// try to commit before it reports no quorum.
const defaultCommandTimeout = 10 * time.Second

// memberFlags are the settings of one member, named prefix+name so that a
// command embedding a member can keep them apart from its own flags
// ("cluster-bind" in the daemon, "bind" in the witness).
func memberFlags(prefix string) []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: prefix + "bind", Usage: "cluster port `ADDR` (host:port) to listen on, e.g. 10.0.0.3:7400", Required: prefix == ""},
		&cli.StringFlag{Name: prefix + "advertise", Usage: "`ADDR` peers dial to reach this member (default: --" + prefix + "bind)"},
		&cli.BoolFlag{Name: prefix + "bootstrap", Usage: "start a new cluster with this member as its only voter (once, on the first host)"},
		&cli.StringFlag{Name: prefix + "join", Usage: "join the cluster through the member at `ADDR` (any member)"},
		&cli.DurationFlag{Name: prefix + "raft-timeout", Usage: "raft heartbeat and election timeout `DURATION`: a dead leader is replaced after 1-2x this", Value: time.Second},
		// Hidden: the defaults suit every deployment (the state is tiny);
		// tests lower them to make members snapshot and truncate their log
		// after a few entries.
		&cli.Uint64Flag{Name: prefix + "raft-snapshot-threshold", Hidden: true, Usage: "snapshot after `N` new log entries (0: 1024)"},
		&cli.DurationFlag{Name: prefix + "raft-snapshot-interval", Hidden: true, Usage: "check the snapshot threshold every 1-2x `DURATION` (0: raft's 2m)"},
		&cli.Uint64Flag{Name: prefix + "raft-trailing-logs", Hidden: true, Usage: "keep `N` log entries after a snapshot for slow followers (0: 1024)"},
	}
}

// memberOptions are what a member takes from its host command rather than
// from memberFlags.
type memberOptions struct {
	NodeID  string
	DataDir string
	Secret  []byte
	Witness bool
	Logger  *slog.Logger
}

// member is one running control-plane member: the raft voter and the
// bootstrap or join it was started with. Close stops both.
type member struct {
	c      *cluster.Cluster
	log    *slog.Logger
	cancel context.CancelFunc
	done   chan struct{}
	fatal  chan error
}

// startMember opens the member described by c's memberFlags (named with
// prefix) and opt, and bootstraps or joins in the background if asked and
// not done before. A refusal that retrying cannot fix (wrong secret, a third
// data host) is sent on Fatal.
func startMember(c *cli.Context, prefix string, opt memberOptions) (*member, error) {
	boot, join := c.Bool(prefix+"bootstrap"), c.String(prefix+"join")
	if boot && join != "" {
		return nil, fmt.Errorf("--%sbootstrap and --%sjoin exclude each other: bootstrap the first member, join the others", prefix, prefix)
	}
	t := c.Duration(prefix + "raft-timeout")
	if t < 50*time.Millisecond {
		return nil, fmt.Errorf("--%sraft-timeout %v is too short (at least 50ms)", prefix, t)
	}
	si := c.Duration(prefix + "raft-snapshot-interval")
	if si != 0 && si < 5*time.Millisecond {
		return nil, fmt.Errorf("--%sraft-snapshot-interval %v is too short (at least 5ms)", prefix, si)
	}
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	cl, err := cluster.Open(cluster.Config{
		NodeID:        opt.NodeID,
		BindAddr:      c.String(prefix + "bind"),
		AdvertiseAddr: c.String(prefix + "advertise"),
		DataDir:       opt.DataDir,
		Secret:        opt.Secret,
		Witness:       opt.Witness,
		Logger:        opt.Logger,

		HeartbeatTimeout:   t,
		ElectionTimeout:    t,
		LeaderLeaseTimeout: t / 2,

		SnapshotThreshold: c.Uint64(prefix + "raft-snapshot-threshold"),
		SnapshotInterval:  si,
		TrailingLogs:      c.Uint64(prefix + "raft-trailing-logs"),
	})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &member{c: cl, log: opt.Logger, cancel: cancel, done: make(chan struct{}), fatal: make(chan error, 1)}
	go func() {
		defer close(m.done)
		if err := m.start(ctx, boot, join); err != nil && ctx.Err() == nil {
			m.fatal <- err
		}
	}()
	return m, nil
}

// start bootstraps or joins unless this member is already a registered
// voter (a restart).
func (m *member) start(ctx context.Context, boot bool, join string) error {
	if !boot && join == "" {
		return nil
	}
	members, err := m.c.Members(ctx)
	if err != nil {
		return err
	}
	// A restarted member is a voter already. A join registers before it
	// adds the voter, so a voter that joined is registered; one that
	// bootstrapped may have died between the two steps, so unless its copy
	// of the state shows it registered, Bootstrap (idempotent) runs again.
	_, registered := m.c.State().Host(m.c.NodeID())
	for _, x := range members {
		if x.ID == m.c.NodeID() && x.Voter && (!boot || registered) {
			m.log.Info("cluster: already a voter; --bootstrap/--join not needed", "node", x.ID)
			return nil
		}
	}
	if boot {
		m.log.Info("cluster: bootstrapping a new cluster", "node", m.c.NodeID(), "addr", m.c.Addr())
		if err := m.c.Bootstrap(ctx); err != nil {
			return err
		}
		m.log.Info("cluster: bootstrapped", "node", m.c.NodeID())
		return nil
	}
	m.log.Info("cluster: joining", "node", m.c.NodeID(), "via", join)
	if err := m.c.Join(ctx, join); err != nil {
		return err
	}
	m.log.Info("cluster: joined", "node", m.c.NodeID(), "via", join)
	return nil
}

// Cluster is the member's handle for the control plane's Go API.
func (m *member) Cluster() *cluster.Cluster { return m.c }

// Fatal delivers at most one error that retrying cannot fix.
func (m *member) Fatal() <-chan error { return m.fatal }

// Close stops a bootstrap or join in progress and closes the member.
func (m *member) Close() error {
	m.cancel()
	<-m.done
	return m.c.Close()
}

// Handler serves the member's control endpoints, all under /cluster.
func (m *member) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /cluster", m.serveStatus)
	mux.HandleFunc("POST /cluster/bootstrap", m.serveCommand(func(ctx context.Context, _ controlRequest) (controlReply, error) {
		return controlReply{}, m.c.Bootstrap(ctx)
	}))
	mux.HandleFunc("POST /cluster/join", m.serveCommand(func(ctx context.Context, r controlRequest) (controlReply, error) {
		if r.Addr == "" {
			return controlReply{}, fmt.Errorf("%w: say which member to join through (host:port)", cluster.ErrInvalidCommand)
		}
		return controlReply{}, m.c.Join(ctx, r.Addr)
	}))
	mux.HandleFunc("POST /cluster/remove", m.serveCommand(func(ctx context.Context, r controlRequest) (controlReply, error) {
		return controlReply{}, m.c.Remove(ctx, r.Node)
	}))
	mux.HandleFunc("POST /cluster/promote", m.serveCommand(func(ctx context.Context, r controlRequest) (controlReply, error) {
		if r.Force && strings.TrimSpace(r.Reason) == "" {
			return controlReply{}, fmt.Errorf("%w: --force needs --reason", cluster.ErrInvalidCommand)
		}
		e, err := m.c.Promote(ctx, r.Node, r.Force, r.Reason)
		return controlReply{Epoch: e, Primary: r.Node}, err
	}))
	mux.HandleFunc("POST /cluster/demote", m.serveCommand(func(ctx context.Context, r controlRequest) (controlReply, error) {
		epoch := r.Epoch
		if epoch == 0 {
			s, err := m.c.Consistent(ctx)
			if err != nil {
				return controlReply{}, err
			}
			epoch = s.Epoch
		}
		e, err := m.c.Demote(ctx, r.Node, epoch)
		return controlReply{Epoch: e}, err
	}))
	return mux
}

// clusterView is GET /cluster: the member's status and the raft voters.
type clusterView struct {
	cluster.Status
	Members []cluster.Member `json:"members"`
	// MembersError says why Members is missing.
	MembersError string `json:"members_error,omitempty"`
	// Consistent is set when Volume was read through the leader.
	Consistent bool `json:"consistent,omitempty"`
}

func (m *member) serveStatus(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout(r.URL.Query().Get("timeout_ms")))
	defer cancel()
	v := clusterView{Status: m.c.Status()}
	if r.URL.Query().Get("consistent") != "" {
		s, err := m.c.Consistent(ctx)
		if err != nil {
			writeControlError(w, err)
			return
		}
		v.Volume, v.Consistent = s, true
	}
	members, err := m.c.Members(ctx)
	if err != nil {
		v.MembersError = err.Error()
	}
	v.Members = members
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// controlRequest is the body of a POST to a member's control socket.
type controlRequest struct {
	Node   string        `json:"node,omitempty"`
	Addr   string        `json:"addr,omitempty"`
	Force  bool          `json:"force,omitempty"`
	Reason string        `json:"reason,omitempty"`
	Epoch  cluster.Epoch `json:"epoch,omitempty"`
	// TimeoutMS bounds the command; default defaultCommandTimeout.
	TimeoutMS int64 `json:"timeout_ms,omitempty"`
}

// controlReply is the answer: the epoch after the command, or an error with
// the code of the sentinel it wraps.
type controlReply struct {
	Epoch   cluster.Epoch `json:"epoch,omitempty"`
	Primary string        `json:"primary,omitempty"`
	Code    string        `json:"code,omitempty"`
	Error   string        `json:"error,omitempty"`
}

func requestTimeout(ms string) time.Duration {
	var n int64
	if _, err := fmt.Sscan(ms, &n); err != nil || n <= 0 {
		return defaultCommandTimeout
	}
	return min(time.Duration(n)*time.Millisecond, 10*time.Minute)
}

func (m *member) serveCommand(do func(context.Context, controlRequest) (controlReply, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req controlRequest
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil {
			writeControlError(w, fmt.Errorf("%w: request body: %v", cluster.ErrInvalidCommand, err))
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), requestTimeout(fmt.Sprint(req.TimeoutMS)))
		defer cancel()
		reply, err := do(ctx, req)
		if err != nil {
			writeControlError(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(reply)
	}
}

// controlCodes carry the cluster's sentinel errors across the control
// socket, so the CLI can test them with errors.Is.
var controlCodes = []struct {
	code   string
	err    error
	status int
}{
	{"no-quorum", cluster.ErrNoQuorum, http.StatusServiceUnavailable},
	{"behind", cluster.ErrBehind, http.StatusServiceUnavailable},
	{"not-uptodate", cluster.ErrNotUpToDate, http.StatusConflict},
	{"stale-epoch", cluster.ErrStaleEpoch, http.StatusConflict},
	{"not-primary", cluster.ErrNotPrimary, http.StatusConflict},
	{"is-primary", cluster.ErrIsPrimary, http.StatusConflict},
	{"cluster-full", cluster.ErrClusterFull, http.StatusConflict},
	{"unknown-node", cluster.ErrUnknownNode, http.StatusNotFound},
	{"witness", cluster.ErrWitness, http.StatusConflict},
	{"invalid-command", cluster.ErrInvalidCommand, http.StatusBadRequest},
	{"auth", cluster.ErrAuth, http.StatusForbidden},
	{"closed", cluster.ErrClosed, http.StatusServiceUnavailable},
}

func writeControlError(w http.ResponseWriter, err error) {
	reply := controlReply{Error: err.Error()}
	status := http.StatusInternalServerError
	for _, c := range controlCodes {
		if errors.Is(err, c.err) {
			reply.Code, status = c.code, c.status
			break
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(reply)
}

// controlError is an error a member answered; it unwraps to the sentinel
// its code names.
type controlError struct {
	msg      string
	sentinel error
}

func (e *controlError) Error() string { return e.msg }
func (e *controlError) Unwrap() error { return e.sentinel }

// memberClient talks to a member's control socket.
type memberClient struct {
	path string
	http *http.Client
}

func newMemberClient(path string) *memberClient {
	return &memberClient{path: path, http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}}
}

// do sends one request; body nil means GET.
func (mc *memberClient) do(ctx context.Context, route string, body any, out any) error {
	method, rd := http.MethodGet, io.Reader(nil)
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		method, rd = http.MethodPost, bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://ldmirror"+route, rd)
	if err != nil {
		return err
	}
	resp, err := mc.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("member on %s did not answer in time: %w", mc.path, err)
		}
		return fmt.Errorf("no cluster member answers on %s (is `ldmirror witness` or the daemon running?): %w", mc.path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		return json.NewDecoder(resp.Body).Decode(out)
	}
	var r controlReply
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || r.Error == "" {
		return fmt.Errorf("control socket %s: %s", mc.path, resp.Status)
	}
	e := &controlError{msg: r.Error}
	for _, c := range controlCodes {
		if c.code == r.Code {
			e.sentinel = c.err
		}
	}
	return e
}

// command runs a POST with the CLI's --timeout.
func (mc *memberClient) command(c *cli.Context, route string, req controlRequest) (controlReply, error) {
	t := c.Duration("timeout")
	if t <= 0 {
		return controlReply{}, fmt.Errorf("--timeout %v: must be positive", t)
	}
	req.TimeoutMS = t.Milliseconds()
	// The member answers at its deadline; the margin covers the socket.
	ctx, cancel := context.WithTimeout(c.Context, t+5*time.Second)
	defer cancel()
	var reply controlReply
	err := mc.do(ctx, route, req, &reply)
	return reply, err
}

// Flags and helpers of the operator commands.

// memberConnFlags say which member a command talks to.
func memberConnFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{
			Name:    "control",
			Usage:   "control socket `PATH` of a running member (default: <data-dir>/control.sock)",
			EnvVars: []string{"LDMIRROR_CLUSTER_CONTROL"},
		},
		&cli.StringFlag{Name: "data-dir", Usage: "data `DIR` of a running member, to find its control socket"},
	}
}

func timeoutFlag() cli.Flag {
	return &cli.DurationFlag{
		Name:  "timeout",
		Usage: "`DURATION` the member may try to commit (e.g. 10s, 500ms); then the command fails with no quorum",
		Value: defaultCommandTimeout,
	}
}

func memberClientFor(c *cli.Context) (*memberClient, error) {
	if p := c.String("control"); p != "" {
		return newMemberClient(p), nil
	}
	if d := c.String("data-dir"); d != "" {
		return newMemberClient(filepath.Join(d, clusterControlFile)), nil
	}
	return nil, errors.New("say which member: --control PATH (its control socket) or --data-dir DIR")
}

// oneArg returns the single positional argument named what. Flags after
// it ("promote b --force --reason X") are applied too: urfave/cli stops
// parsing flags at the first argument.
func oneArg(c *cli.Context, what string) (string, error) {
	if c.NArg() < 1 {
		return "", fmt.Errorf("%s takes one argument, %s", c.Command.Name, what)
	}
	rest := c.Args().Tail()
	for len(rest) > 0 {
		tok := rest[0]
		rest = rest[1:]
		name, value, hasValue := strings.Cut(strings.TrimLeft(tok, "-"), "=")
		if !strings.HasPrefix(tok, "-") || name == "" {
			return "", fmt.Errorf("%s takes one argument, %s; %q is one too many", c.Command.Name, what, tok)
		}
		f := lookupFlag(c.Command.Flags, name)
		if f == nil {
			return "", fmt.Errorf("%s: unknown flag %s", c.Command.Name, tok)
		}
		if _, isBool := f.(*cli.BoolFlag); isBool && !hasValue {
			value, hasValue = "true", true
		}
		if !hasValue {
			if len(rest) == 0 {
				return "", fmt.Errorf("%s: flag %s needs a value", c.Command.Name, tok)
			}
			value, rest = rest[0], rest[1:]
		}
		if err := c.Set(name, value); err != nil {
			return "", fmt.Errorf("%s: %s: %w", c.Command.Name, tok, err)
		}
	}
	return c.Args().First(), nil
}

func lookupFlag(flags []cli.Flag, name string) cli.Flag {
	for _, f := range flags {
		if slices.Contains(f.Names(), name) {
			return f
		}
	}
	return nil
}

// memberCommand runs a member until SIGTERM or SIGINT: the witness, or a
// data host's member without the data path.
func memberCommand(name, usage, description string, witness bool, hidden bool) *cli.Command {
	flags := append([]cli.Flag{
		&cli.StringFlag{Name: "data-dir", Usage: "`DIR` for the raft log, snapshots and control.sock; it survives restarts", Required: true},
		&cli.StringFlag{Name: "node-id", Usage: "this member's name `ID`, never reused for another host (default: the hostname)"},
		&cli.StringFlag{Name: "secret-file", Usage: "`FILE` holding the secret (>= 16 bytes) all members share", Required: true},
		&cli.StringFlag{Name: "log-level", Usage: "`LEVEL`: debug, info, warn or error", Value: "info"},
	}, memberFlags("")...)
	return &cli.Command{
		Name: name, Usage: usage, Description: description, Hidden: hidden, Flags: flags,
		Action: func(c *cli.Context) error { return runMember(c, witness) },
	}
}

func witnessCommand() *cli.Command {
	return memberCommand("witness",
		"run a witness: a raft voter with no volume that breaks ties between the two data hosts",
		"It votes on every role change so that either data host plus the witness is a majority.\n"+
			"Start the first member with --bootstrap, the others with --join ADDR of a running one;\n"+
			"a restarted member needs neither. It serves GET /cluster on <data-dir>/control.sock\n"+
			"(read it with 'ldmirror cluster status'). SIGTERM or SIGINT stops it.",
		true, false)
}

// flagLogger is a text logger on stderr at the level of c's --log-level.
func flagLogger(c *cli.Context) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})), nil
}

// flagNodeID is c's --node-id, or the host name.
func flagNodeID(c *cli.Context) (string, error) {
	if id := c.String("node-id"); id != "" {
		return id, nil
	}
	id, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("--node-id not set and no hostname: %w", err)
	}
	return id, nil
}

func runMember(c *cli.Context, witness bool) error {
	log, err := flagLogger(c)
	if err != nil {
		return err
	}
	id, err := flagNodeID(c)
	if err != nil {
		return err
	}
	secret, err := readSecretFile(c.String("secret-file"))
	if err != nil {
		return err
	}
	dir := c.String("data-dir")
	m, err := startMember(c, "", memberOptions{NodeID: id, DataDir: dir, Secret: secret, Witness: witness, Logger: log})
	if err != nil {
		return err
	}
	defer m.Close()
	sockPath := filepath.Join(dir, clusterControlFile)
	sock, err := node.ServeControl(sockPath, m.Handler())
	if err != nil {
		return err
	}
	defer sock.Close()
	log.Info("cluster member running", "node", id, "addr", m.Cluster().Addr(), "witness", witness, "control", sockPath)
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	select {
	case <-ctx.Done():
		log.Info("stopping")
		return nil
	case err := <-m.Fatal():
		return err
	}
}

// readSecretFile reads a shared secret; surrounding white space is not part
// of it.
func readSecretFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--secret-file: %w", err)
	}
	s := bytes.TrimSpace(b)
	if len(s) < cluster.MinSecretLen {
		return nil, fmt.Errorf("--secret-file %s holds %d bytes, need at least %d", path, len(s), cluster.MinSecretLen)
	}
	return s, nil
}

const controlPlaneOnly = "Needs daemons run with --cluster-bind: their data path follows the role the control plane names."

func clusterCommand() *cli.Command {
	cmdFlags := func() []cli.Flag { return append(memberConnFlags(), timeoutFlag()) }
	return &cli.Command{
		Name:  "cluster",
		Usage: "show and change the control plane's membership (see docs/cluster.md)",
		Subcommands: []*cli.Command{
			{
				Name:  "status",
				Usage: "members, raft leader, primary, epoch, each host's disk state and forced promotions",
				Flags: append(cmdFlags(),
					&cli.BoolFlag{Name: "json", Usage: "print JSON"},
					&cli.BoolFlag{Name: "consistent", Usage: "read the volume state through the leader (needs quorum) instead of this member's copy"},
				),
				Action: clusterStatus,
			},
			{
				Name:  "bootstrap",
				Usage: "make the member the first voter of a new cluster (once; safe to repeat)",
				Flags: cmdFlags(),
				Action: func(c *cli.Context) error {
					return simpleCommand(c, "/cluster/bootstrap", controlRequest{}, "bootstrapped")
				},
			},
			{
				Name:      "join",
				Usage:     "make the member join the cluster through the member at ADDR",
				ArgsUsage: "ADDR",
				Flags:     cmdFlags(),
				Action: func(c *cli.Context) error {
					addr, err := oneArg(c, "the host:port of a member's cluster port")
					if err != nil {
						return err
					}
					return simpleCommand(c, "/cluster/join", controlRequest{Addr: addr}, "joined via "+addr)
				},
			},
			{
				Name:        "remove",
				Usage:       "take NODE out of the cluster (to replace a dead host; it shrinks the quorum)",
				ArgsUsage:   "NODE",
				Description: "The primary cannot be removed: demote it or fail over first.",
				Flags:       cmdFlags(),
				Action: func(c *cli.Context) error {
					node, err := oneArg(c, "the node ID to remove")
					if err != nil {
						return err
					}
					return simpleCommand(c, "/cluster/remove", controlRequest{Node: node}, "removed "+node)
				},
			},
			memberCommand("member",
				"run a data host's member without the volume (until the daemon embeds it)",
				"Same flags as 'ldmirror witness'; the member registers as a data host, which can be primary.",
				false, true),
		},
	}
}

func simpleCommand(c *cli.Context, route string, req controlRequest, done string) error {
	mc, err := memberClientFor(c)
	if err != nil {
		return err
	}
	if _, err := mc.command(c, route, req); err != nil {
		return err
	}
	fmt.Println(done)
	return nil
}

func promoteCommand() *cli.Command {
	return &cli.Command{
		Name:      "promote",
		Usage:     "make NODE primary in a new epoch (refused unless its disk is uptodate)",
		ArgsUsage: "NODE",
		Description: "A current primary is displaced and marked outdated. --force --reason TEXT promotes a host\n" +
			"that is not uptodate: its data becomes the truth, every other copy outdated; the reason is\n" +
			"logged and shown by 'ldmirror cluster status'.\n" + controlPlaneOnly,
		Flags: append(append(memberConnFlags(), timeoutFlag()),
			&cli.BoolFlag{Name: "force", Usage: "promote although the disk is not uptodate (accepts losing writes it lacks)"},
			&cli.StringFlag{Name: "reason", Usage: "why the promotion is forced: `TEXT` recorded in the cluster state and shown in status"},
		),
		Action: func(c *cli.Context) error {
			node, err := oneArg(c, "the node ID to promote")
			if err != nil {
				return err
			}
			force, reason := c.Bool("force"), strings.TrimSpace(c.String("reason"))
			if force && reason == "" {
				return errors.New("--force needs --reason TEXT: it is recorded and shown in status")
			}
			if reason != "" && !force {
				return errors.New("--reason is only for --force")
			}
			mc, err := memberClientFor(c)
			if err != nil {
				return err
			}
			r, err := mc.command(c, "/cluster/promote", controlRequest{Node: node, Force: force, Reason: reason})
			if err != nil {
				return commandError("promote", node, err)
			}
			forced := ""
			if force {
				forced = " (forced)"
			}
			fmt.Printf("%s is primary in epoch %d%s\n", node, r.Epoch, forced)
			return nil
		},
	}
}

func demoteCommand() *cli.Command {
	return &cli.Command{
		Name:      "demote",
		Usage:     "end NODE's tenure as primary: a new epoch with no primary",
		ArgsUsage: "NODE",
		Description: "Refused unless NODE is primary in --epoch (default: the current epoch, read through the leader).\n" +
			controlPlaneOnly,
		Flags: append(append(memberConnFlags(), timeoutFlag()),
			&cli.Uint64Flag{Name: "epoch", Usage: "the `EPOCH` NODE is primary in", DefaultText: "the current epoch"},
		),
		Action: func(c *cli.Context) error {
			node, err := oneArg(c, "the node ID to demote")
			if err != nil {
				return err
			}
			mc, err := memberClientFor(c)
			if err != nil {
				return err
			}
			r, err := mc.command(c, "/cluster/demote", controlRequest{Node: node, Epoch: cluster.Epoch(c.Uint64("epoch"))})
			if err != nil {
				return commandError("demote", node, err)
			}
			fmt.Printf("%s demoted: no primary in epoch %d\n", node, r.Epoch)
			return nil
		},
	}
}

// commandError names the command and node unless the member's error
// already does.
func commandError(op, node string, err error) error {
	if strings.HasPrefix(err.Error(), op+" "+node+":") {
		return err
	}
	return fmt.Errorf("%s %s: %w", op, node, err)
}

func clusterStatus(c *cli.Context) error {
	mc, err := memberClientFor(c)
	if err != nil {
		return err
	}
	t := c.Duration("timeout")
	ctx, cancel := context.WithTimeout(c.Context, t+5*time.Second)
	defer cancel()
	route := fmt.Sprintf("/cluster?timeout_ms=%d", t.Milliseconds())
	if c.Bool("consistent") {
		route += "&consistent=1"
	}
	var v clusterView
	if err := mc.do(ctx, route, nil, &v); err != nil {
		return err
	}
	if c.Bool("json") {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	writeClusterView(os.Stdout, v)
	return nil
}

// writeClusterView prints v for an operator.
func writeClusterView(w io.Writer, v clusterView) {
	vol := v.Volume
	src := "this member's copy, may lag the leader"
	if v.Consistent {
		src = "read through the leader"
	}
	fmt.Fprintf(w, "member:   %s (%s, term %d, applied index %d)\n", v.NodeID, strings.ToLower(v.RaftState), v.Term, v.AppliedIndex)
	leader := "none known"
	if v.Leader != "" {
		leader = v.Leader + " at " + v.LeaderAddr
	}
	fmt.Fprintf(w, "leader:   %s\n", leader)
	primary := "none"
	if vol.Primary != "" {
		primary = vol.Primary
	}
	fmt.Fprintf(w, "primary:  %s\n", primary)
	fmt.Fprintf(w, "epoch:    %d (began at index %d; state at index %d, %s)\n", vol.Epoch, vol.EpochIndex, vol.Index, src)
	fmt.Fprintln(w, "hosts:")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  ID\tRAFT\tKIND\tADDR\tDISK\tACKED")
	var ids []string
	members := map[string]cluster.Member{}
	for _, m := range v.Members {
		members[m.ID] = m
		ids = append(ids, m.ID)
	}
	for _, h := range vol.Hosts {
		if _, ok := members[h.ID]; !ok {
			ids = append(ids, h.ID)
		}
	}
	slices.Sort(ids)
	for _, id := range ids {
		m, inRaft := members[id]
		h, registered := vol.Host(id)
		raftRole := "not in raft"
		if inRaft {
			raftRole = "nonvoter"
			if m.Voter {
				raftRole = "voter"
			}
			if m.Leader {
				raftRole += ",leader"
			}
		}
		kind, disk, acked := "unregistered", "-", "-"
		if registered {
			kind, disk = "data", fmt.Sprintf("%s since epoch %d", h.Disk, h.DiskEpoch)
			if h.Witness {
				kind, disk = "witness", string(h.Disk)
			} else if h.AckedEpoch != 0 || h.AckedSeq != 0 {
				acked = fmt.Sprintf("seq %d in epoch %d", h.AckedSeq, h.AckedEpoch)
			}
			if id == vol.Primary {
				kind = "data,primary"
			}
		}
		addr := m.Addr
		if addr == "" {
			addr = "-"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", id, raftRole, kind, addr, disk, acked)
	}
	tw.Flush()
	if v.MembersError != "" {
		fmt.Fprintf(w, "raft members unknown: %s\n", v.MembersError)
	}
	fmt.Fprintf(w, "forced promotions: %d\n", vol.ForcedPromotions)
	if f := vol.LastForced; vol.ForcedPromotions > 0 {
		fmt.Fprintf(w, "last forced: %s in epoch %d at %s (disk was %s): %q\n", f.Node, f.Epoch, f.At.Format(time.RFC3339), f.Disk, f.Reason)
	}
}
