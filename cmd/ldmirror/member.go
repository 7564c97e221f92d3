package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"time"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/ctl"
	"github.com/ldmirror/ldmirror/pki"
	"github.com/ldmirror/ldmirror/resource"
	"github.com/urfave/cli/v2"
)

// A control-plane member run by the CLI: the witness, the hidden `cluster
// member` (a data host's member without the volume), and the member the
// daemon embeds with --cluster-bind (its flags named with the prefix
// "cluster-"). The member's control routes are package ctl's.

// clusterControlFile is the member's control socket under --data-dir.
const clusterControlFile = "control.sock"

// memberFlags are the settings of one member, named prefix+name so that a
// command embedding a member can keep them apart from its own flags
// ("cluster-bind" in the daemon, "bind" in the witness).
func memberFlags(prefix string) []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: prefix + "bind", Usage: "cluster port `ADDR` (host:port) to listen on, e.g. 10.0.0.3:7400"},
		&cli.StringFlag{Name: prefix + "advertise", Usage: "`ADDR` peers dial to reach this member (default: --" + prefix + "bind)"},
		&cli.BoolFlag{Name: prefix + "bootstrap", Usage: "start a new cluster with this member as its only voter (once, on the first host)"},
		&cli.StringFlag{Name: prefix + "join", Usage: "join the cluster through the member at `ADDR` (any member)"},
		&cli.DurationFlag{Name: prefix + "raft-timeout", Usage: "raft heartbeat and election timeout `DURATION` (at least 50ms): a dead leader is replaced after 1-2x this", Value: time.Second},
		// Hidden: the defaults suit every deployment (the state is tiny);
		// tests lower them to make members snapshot and truncate their log
		// after a few entries.
		&cli.Uint64Flag{Name: prefix + "raft-snapshot-threshold", Hidden: true, Usage: "snapshot after `N` new log entries (0: 1024)"},
		&cli.DurationFlag{Name: prefix + "raft-snapshot-interval", Hidden: true, Usage: "check the snapshot threshold every 1-2x `DURATION` (0: raft's 2m)"},
		&cli.Uint64Flag{Name: prefix + "raft-trailing-logs", Hidden: true, Usage: "keep `N` log entries after a snapshot for slow followers (0: 1024)"},
	}
}

// member is one running control-plane member and the bootstrap or join it
// was started with. Close stops both.
type member struct {
	c      *cluster.Cluster
	cancel context.CancelFunc
	done   chan struct{}
	fatal  chan error
}

// startMember opens the member described by c's memberFlags (named with
// prefix), bootstraps or joins in the background if asked and not done
// before, and sends on Fatal a refusal that retrying cannot fix (wrong
// secret, a third data host).
func startMember(c *cli.Context, prefix, id, dataDir string, creds *pki.Source, witness bool, log *slog.Logger) (*member, error) {
	boot, join := c.Bool(prefix+"bootstrap"), c.String(prefix+"join")
	if boot && join != "" {
		return nil, fmt.Errorf("--%sbootstrap and --%sjoin exclude each other: bootstrap the first member, join the others", prefix, prefix)
	}
	t := c.Duration(prefix + "raft-timeout")
	cl, err := cluster.Open(cluster.Config{
		NodeID:        id,
		BindAddr:      c.String(prefix + "bind"),
		AdvertiseAddr: c.String(prefix + "advertise"),
		DataDir:       dataDir,
		TLS:           creds,
		Witness:       witness,
		Logger:        log,

		HeartbeatTimeout:   t,
		ElectionTimeout:    t,
		LeaderLeaseTimeout: t / 2,

		SnapshotThreshold: c.Uint64(prefix + "raft-snapshot-threshold"),
		SnapshotInterval:  c.Duration(prefix + "raft-snapshot-interval"),
		TrailingLogs:      c.Uint64(prefix + "raft-trailing-logs"),
	})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &member{c: cl, cancel: cancel, done: make(chan struct{}), fatal: make(chan error, 1)}
	go func() {
		defer close(m.done)
		if err := cl.BootstrapOrJoin(ctx, boot, join); err != nil && ctx.Err() == nil {
			m.fatal <- err
		}
	}()
	return m, nil
}

// Fatal delivers at most one error that retrying cannot fix.
func (m *member) Fatal() <-chan error { return m.fatal }

// Close stops a bootstrap or join in progress and closes the member.
func (m *member) Close() error {
	m.cancel()
	<-m.done
	return m.c.Close()
}

// memberCommand runs a member until SIGTERM or SIGINT: the witness, or a
// data host's member without the data path.
func memberCommand(name, usage, description string, witness bool, hidden bool) *cli.Command {
	flags := append(append([]cli.Flag{
		&cli.StringFlag{Name: "data-dir", Usage: "`DIR` for the raft log, snapshots and control.sock; it survives restarts"},
		nodeIDFlag(),
		&cli.StringFlag{Name: "secret-file", Hidden: true}, // refused with a pointer to certificates
	}, logFlags()...), append(memberFlags(""), tlsFlags(false)...)...)
	cmd := &cli.Command{
		Name: name, Usage: usage, Description: description, Hidden: hidden, Flags: flags,
		Action: func(c *cli.Context) error { return runMember(c, witness, nil) },
	}
	if witness {
		cmd.ArgsUsage = "[RESOURCE]"
		cmd.Action = withResourceArg(resource.RoleWitness, witnessSettings, func(c *cli.Context, l *loadedResource) error {
			return runMember(c, true, l)
		})
	}
	return cmd
}

func witnessCommand() *cli.Command {
	return memberCommand("witness",
		"run a witness: a raft voter with no volume that breaks ties between the two data hosts",
		"It votes on every role change so that either data host plus the witness is a majority.\n"+
			"Start the first member with --bootstrap, the others with --join ADDR of a running one;\n"+
			"a restarted member needs neither. With RESOURCE, its file gives every flag and the witness\n"+
			"bootstraps the control plane the first time. It serves GET /cluster on <data-dir>/control.sock\n"+
			"(read it with 'ldmirror cluster status'). SIGTERM or SIGINT stops it; SIGHUP re-reads its\n"+
			"certificate and its resource file's log level.",
		true, false)
}

func runMember(c *cli.Context, witness bool, l *loadedResource) error {
	lg, err := newLogs(c)
	if err != nil {
		return err
	}
	kind := "member"
	if witness {
		kind = "witness"
	}
	log := lg.With(componentKey, kind)
	svc := startService(log)
	defer svc.Close()
	dir := c.String("data-dir")
	if dir == "" || c.String("bind") == "" {
		return errors.New("say which member: a resource name, or --data-dir DIR and --bind ADDR")
	}
	id, err := flagNodeID(c)
	if err != nil {
		return err
	}
	if c.IsSet("secret-file") {
		return errors.New("--secret-file: members no longer share a secret; give this one its certificate (--tls-dir; ldmirror pki issue, docs/operations.md)")
	}
	creds, err := nodeCredentials(c, id, true, log)
	if err != nil {
		return err
	}
	m, err := startMember(c, "", id, dir, creds.tls, witness, lg.With(componentKey, "cluster"))
	if err != nil {
		return err
	}
	defer m.Close()
	sockPath := filepath.Join(dir, clusterControlFile)
	sock, err := ctl.Serve(sockPath, ctl.Handler(ctl.Routes{Member: m.c, Process: svc}))
	if err != nil {
		return err
	}
	defer sock.Close()
	var explicit map[string]string
	if l != nil {
		explicit = l.explicit
	}
	r := newReloader(c, l, explicit, lg, creds.tls, nil, witnessSettings)
	svc.serve(func() (bool, string) { return true, memberLine(kind, m.c.Status()) }, r.reload)
	log.Info("cluster member running", "node", id, "addr", m.c.Addr(), "witness", witness, "control", sockPath)
	select {
	case <-svc.Done():
		log.Info("stopped")
		return nil
	case err := <-m.Fatal():
		return err
	}
}

// memberLine is a member's state in one line, for systemd's STATUS=.
func memberLine(kind string, st cluster.Status) string {
	leader := st.Leader
	if leader == "" {
		leader = "none (no quorum?)"
	}
	primary := st.Volume.Primary
	if primary == "" {
		primary = "none"
	}
	return fmt.Sprintf("%s %s: raft %s, leader %s, primary %s in epoch %d", kind, st.NodeID, strings.ToLower(st.RaftState), leader, primary, st.Volume.Epoch)
}
