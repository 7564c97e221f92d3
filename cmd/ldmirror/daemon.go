package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/ctl"
	"github.com/ldmirror/ldmirror/events"
	"github.com/ldmirror/ldmirror/export"
	"github.com/ldmirror/ldmirror/internal/bytesize"
	"github.com/ldmirror/ldmirror/ldapagent/agent"
	"github.com/ldmirror/ldmirror/ldapagent/probe"
	"github.com/ldmirror/ldmirror/metrics"
	"github.com/ldmirror/ldmirror/mirror"
	"github.com/ldmirror/ldmirror/node"
	"github.com/ldmirror/ldmirror/pki"
	"github.com/ldmirror/ldmirror/resource"
	"github.com/ldmirror/ldmirror/volume"
	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"
)

func daemonCommand() *cli.Command {
	return &cli.Command{
		Name:      "daemon",
		Usage:     "run one data host of a mirrored volume",
		ArgsUsage: "[RESOURCE]",
		Description: "A primary exports the volume through FUSE as <mount>/volume (attach it with 'ldmirror attach')\n" +
			"and mirrors every write to the secondary at --peer. A secondary accepts the primary on --listen\n" +
			"and applies its writes. With --cluster-bind the raft control plane names the role and the host\n" +
			"follows it: named primary, it serves the export; no longer named, it refuses writes, waits for\n" +
			"the export's loop device to be detached, and turns secondary. Such a host needs both --listen\n" +
			"and --peer. With RESOURCE, its file in --config-dir gives every flag (docs/operations.md,\n" +
			"\"Resource files\"); flags given override it. SIGTERM or SIGINT: loop devices it attached are\n" +
			"detached, writes in flight complete and are acknowledged, the export and the control socket go,\n" +
			"then it exits. SIGHUP: the certificate, and from RESOURCE the log level, resync rates and probe\n" +
			"settings, apply at once; the log says what else changed and needs a restart.",
		Flags: append(append([]cli.Flag{
			dirFlag,
			&cli.StringFlag{Name: "role", Usage: "primary or secondary; with --cluster-bind the control plane names the role instead"},
			nodeIDFlag(),
			&cli.StringFlag{Name: "listen", Usage: "`ADDR` this host accepts the primary on while secondary, e.g. 0.0.0.0:7789"},
			&cli.StringFlag{Name: "peer", Usage: "`ADDR` the peer listens on, dialled while primary (none: standalone, writes stay dirty)"},
			&cli.StringFlag{Name: "mount", Usage: "`DIR` for the primary's FUSE export (default: export in --dir)"},
			&cli.DurationFlag{Name: "timeout", Usage: "peer timeout: handshake, each ack, silence", Value: node.DefaultTimeout},
			&cli.IntFlag{Name: "window", Usage: "writes in flight to the peer at most", Value: 64},
			&cli.BoolFlag{Name: "activity-log", Value: true, Usage: "log write intent per 4 MiB extent; false is unsafe: after a primary crash, blocks written just before it may differ without being resynced"},
			&cli.StringFlag{Name: "mode", Value: "sync", Usage: "sync: a write returns once the peer has it; async: once it is in the local journal, which ships in order and, after a disconnect or a restart of the primary, is replayed to catch the peer up (both hosts run the same mode)"},
			&cli.StringFlag{Name: "journal-size", Value: "64MiB", Usage: "async: journal capacity, how far the peer may lag"},
			&cli.StringFlag{Name: "journal-full", Value: "throttle", Usage: "async, journal full while connected: throttle writers, or logging (fall back to a bitmap resync)"},
			&cli.BoolFlag{Name: "resync-checksum", Usage: "compare block checksums before every resync copy (always done after a primary crash)"},
			&cli.BoolFlag{Name: "resync-protection", Value: true, Usage: "as a resync's target, stage it beside the volume until it completes, so that the volume stays consistent as of its disconnect; false is unsafe: the volume is inconsistent during every resync (for measurement)"},
			&cli.BoolFlag{Name: "unsafe-inconsistent", Usage: "as a resync's target with no room to stage it, take it unprotected (the volume is inconsistent until it completes) rather than refuse it"},
			&cli.StringFlag{Name: "resync-rate", Usage: "limit resync traffic, e.g. 100MiB (per second; default: no limit)"},
			&cli.StringFlag{Name: "resync-min-rate", Value: "16MiB", Usage: "while the application writes, a resync slows to this (per second; 0: it never yields)"},
			&cli.BoolFlag{Name: "passthrough", Usage: "benchmark baseline: serve the local file with no mirroring or dirty tracking"},
			&cli.StringFlag{Name: "probe-url", Usage: "directory server to watch, e.g. ldap://127.0.0.1:389 or ldapi://%2Frun%2Fslapd%2Fldapi; its health shows in status"},
			&cli.StringFlag{Name: "probe-bind-dn", Usage: "DN the probe binds as (default: anonymous)"},
			&cli.StringFlag{Name: "probe-password-file", Usage: "`FILE` holding the probe's bind password"},
			&cli.StringFlag{Name: "probe-read-dn", Usage: "entry the probe reads"},
			&cli.StringFlag{Name: "probe-canary-dn", Usage: "existing entry whose description the probe rewrites (a write probe)"},
			&cli.DurationFlag{Name: "probe-interval", Usage: "time between probes", Value: probe.DefaultInterval},
			&cli.DurationFlag{Name: "probe-timeout", Usage: "bound of one probe", Value: probe.DefaultTimeout},
			&cli.IntFlag{Name: "probe-threshold", Usage: "failed probes in a row before the server counts as down", Value: probe.DefaultThreshold},
			&cli.StringFlag{Name: "agent-config", Usage: "`FILE` (JSON) of the LDAP agent that fails the directory service over (docs/agent.md); needs --cluster-bind. A resource file's [agent] instead"},
			&cli.StringFlag{Name: "metrics-listen", Usage: "serve Prometheus metrics at http://`ADDR`/metrics, e.g. 127.0.0.1:9942 (default: none)"},
			&cli.StringFlag{Name: "cpu-profile", Usage: "write a pprof CPU profile of the whole run to `FILE`"},
		}, logFlags()...), append(memberFlags("cluster-"), tlsFlags(true)...)...),
		Action: withResourceArg(resource.RoleData, daemonSettings, runDaemon),
	}
}

// minProcs is the daemon's least GOMAXPROCS. Ps, not CPUs, bound the
// goroutines that run Go code or sit in a syscall that has not given its P
// back yet: the FUSE request reader blocked in read(2), and every pwrite,
// writev and fdatasync. With one P per CPU on a small machine those hold
// the Ps, and the goroutines that carry the peer's acks wait until the
// runtime takes one back. On 2 CPUs, 4 KiB randwrite qd16, sync: 24k IOPS
// with 2 Ps, 29k with 4, 33k with 8 (docs/benchmarks.md).
const minProcs = 8

func runDaemon(c *cli.Context, l *loadedResource) error {
	lg, err := newLogs(c)
	if err != nil {
		return err
	}
	log := lg.With(componentKey, "daemon")
	svc := startService(log)
	defer svc.Close()
	id, creds, err := daemonProcess(c, log)
	if err != nil {
		return err
	}
	agentCfg, err := loadAgentConfig(c, l)
	if err != nil {
		return err
	}
	member, err := daemonMember(c, id, creds.tls, lg.With(componentKey, "cluster"))
	if err != nil {
		return err
	}
	var cp node.ControlPlane // a nil *cluster.Cluster must not become a non-nil interface
	var routes ctl.Member
	if member != nil {
		defer member.Close()
		cp, routes = member.c, member.c
		go stopOnMemberFailure(member, svc, log)
	}
	cfg, err := nodeConfig(c, id, cp, lg.With(componentKey, "node"))
	if err != nil {
		return err
	}
	var n *node.Node
	var mx *metrics.Metrics
	if c.String("metrics-listen") != "" {
		mx = metrics.New(func() node.Status { return n.Status() }, buildVersion().Version)
		cfg.Observer = mx
	}
	n, err = node.Open(creds.link(cfg))
	if err != nil {
		return err
	}
	closeAll, err := serveDaemon(c, lg, id, n, agentCfg, member, routes, svc, mx)
	if err != nil {
		n.Close()
		return err
	}
	defer closeAll()
	var explicit map[string]string
	if l != nil {
		explicit = l.explicit
	}
	r := newReloader(c, l, explicit, lg, creds.tls, n, daemonSettings)
	svc.serve(func() (bool, string) {
		st := n.Status()
		return daemonReady(st), summaryLine(st)
	}, r.reload)
	if err := runUntilStopped(n, svc); err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}

// daemonProcess checks what the daemon needs before it starts anything
// and sets up the process: the node ID, its credentials, GOMAXPROCS, and
// the I/O flusher mark.
func daemonProcess(c *cli.Context, log *slog.Logger) (string, *credentials, error) {
	if c.String("dir") == "" {
		return "", nil, errors.New("say which volume: a resource name or --dir DIR")
	}
	if os.Getenv("GOMAXPROCS") == "" && runtime.GOMAXPROCS(0) < minProcs {
		runtime.GOMAXPROCS(minProcs)
	}
	id, err := flagNodeID(c)
	if err != nil {
		return "", nil, err
	}
	creds, err := daemonCredentials(c, id, log)
	if err != nil {
		return "", nil, err
	}
	// A FUSE server that memory reclaim waits on must not itself wait for
	// reclaim (libfuse#700).
	if err := unix.Prctl(unix.PR_SET_IO_FLUSHER, 1, 0, 0, 0); err != nil {
		log.Warn("could not mark the daemon as an I/O flusher", "err", err)
	}
	return id, creds, nil
}

// stopOnMemberFailure stops the daemon if its control-plane member fails.
func stopOnMemberFailure(m *member, svc *service, log *slog.Logger) {
	select {
	case err := <-m.Fatal():
		log.Error("control plane member failed; stopping", "err", err)
		svc.Stop()
	case <-svc.Done():
	}
}

// serveDaemon starts what serves the node: the agent, the CPU profile, the
// control socket with its event feed, and the metrics listener. closeAll
// stops them in reverse order.
func serveDaemon(c *cli.Context, lg logs, id string, n *node.Node, agentCfg *agent.Config, member *member, routes ctl.Member, svc *service, mx *metrics.Metrics) (closeAll func(), err error) {
	var closers []func()
	closeAll = func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	defer func() {
		if err != nil {
			closeAll()
		}
	}()
	if agentCfg != nil {
		ag, err := startAgent(c, *agentCfg, id, member.c, n, lg.With(componentKey, "agent"))
		if err != nil {
			return nil, err
		}
		closers = append(closers, func() { ag.Close() })
		n.SetAgent(ag)
	}
	stopProfile, err := startProfile(c.String("cpu-profile"))
	if err != nil {
		return nil, err
	}
	closers = append(closers, stopProfile)
	feed := events.NewFeed(n.Status, 0)
	sock, err := ctl.Serve(filepath.Join(c.String("dir"), volume.ControlFile), ctl.Handler(ctl.Routes{Host: n, Member: routes, Process: svc, Events: feed}))
	if err != nil {
		feed.Close()
		return nil, err
	}
	// The feed closes before the socket: it ends the event streams.
	closers = append(closers, func() { sock.Close() }, func() { feed.Close() })
	if mx != nil {
		ms, err := metrics.Serve(c.String("metrics-listen"), mx.Handler(), lg.With(componentKey, "metrics"))
		if err != nil {
			return nil, err
		}
		closers = append(closers, func() { ms.Close() })
	}
	return closeAll, nil
}

// runUntilStopped runs the node until the service is told to stop. Then
// it detaches first the loop devices this daemon attached, while the
// export still serves them, and then stops the node.
func runUntilStopped(n *node.Node, svc *service) error {
	nodeCtx, stopNode := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		select {
		case <-svc.Done():
			n.DetachAttached()
			stopNode()
		case <-nodeCtx.Done():
		}
	}()
	err := n.Run(nodeCtx)
	stopNode()
	<-stopped
	return err
}

// daemonReady reports whether a data host serves: its role is known, and
// a primary's export is mounted.
func daemonReady(st node.Status) bool {
	switch st.Role {
	case cluster.RolePrimary:
		return st.Export != ""
	case cluster.RoleSecondary:
		return st.Replication != node.ReplicationNoTerm
	}
	return false
}

// nodeConfig is the node's configuration from c's flags.
func nodeConfig(c *cli.Context, id string, cp node.ControlPlane, log *slog.Logger) (node.Config, error) {
	var cfg node.Config
	rate, minRate, err := resyncRates(c)
	if err != nil {
		return cfg, err
	}
	mode, err := mirror.ParseMode(c.String("mode"))
	if err != nil {
		return cfg, fmt.Errorf("--mode: %w", err)
	}
	onFull, err := mirror.ParseFullPolicy(c.String("journal-full"))
	if err != nil {
		return cfg, fmt.Errorf("--journal-full: %w", err)
	}
	journalSize, err := bytesize.Parse(c.String("journal-size"))
	if err != nil {
		return cfg, fmt.Errorf("--journal-size: %w", err)
	}
	pcfg, err := probeConfig(c)
	if err != nil {
		return cfg, err
	}
	return node.Config{
		Dir:                c.String("dir"),
		Role:               cluster.Role(c.String("role")),
		NodeID:             id,
		Listen:             c.String("listen"),
		Peer:               c.String("peer"),
		MountDir:           c.String("mount"),
		Timeout:            c.Duration("timeout"),
		Window:             c.Int("window"),
		Passthrough:        c.Bool("passthrough"),
		ResyncRate:         rate,
		ResyncMinRate:      minRate,
		Mode:               mode,
		JournalSize:        journalSize,
		OnFull:             onFull,
		NoActivityLog:      !c.Bool("activity-log"),
		NoResyncProtection: !c.Bool("resync-protection"),
		UnsafeInconsistent: c.Bool("unsafe-inconsistent"),
		ResyncChecksum:     c.Bool("resync-checksum"),
		Probe:              pcfg,
		ControlPlane:       cp,
		Logger:             log,
	}, nil
}

// resyncRates are c's --resync-rate and --resync-min-rate in bytes per
// second (0: no limit; never yield).
func resyncRates(c *cli.Context) (rate, minRate int64, err error) {
	if r := c.String("resync-rate"); r != "" && r != "0" {
		if rate, err = bytesize.Parse(r); err != nil {
			return 0, 0, fmt.Errorf("--resync-rate: %w", err)
		}
	}
	if r := c.String("resync-min-rate"); r != "0" {
		if minRate, err = bytesize.Parse(r); err != nil {
			return 0, 0, fmt.Errorf("--resync-min-rate: %w", err)
		}
	}
	return rate, minRate, nil
}

// probeConfig is the probe c's --probe-* flags describe.
func probeConfig(c *cli.Context) (probe.Config, error) {
	pcfg := probe.Config{
		URL:       c.String("probe-url"),
		BindDN:    c.String("probe-bind-dn"),
		ReadDN:    c.String("probe-read-dn"),
		CanaryDN:  c.String("probe-canary-dn"),
		Interval:  c.Duration("probe-interval"),
		Timeout:   c.Duration("probe-timeout"),
		Threshold: c.Int("probe-threshold"),
	}
	if f := c.String("probe-password-file"); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return pcfg, fmt.Errorf("--probe-password-file: %w", err)
		}
		pcfg.Password = strings.TrimRight(string(b), "\r\n")
	}
	return pcfg, nil
}

// startAgent starts the LDAP agent of node n.
func startAgent(c *cli.Context, cfg agent.Config, id string, cp *cluster.Cluster, n *node.Node, log *slog.Logger) (*agent.Agent, error) {
	mount := c.String("mount")
	if mount == "" {
		mount = filepath.Join(c.String("dir"), volume.ExportDir)
	}
	ag, err := agent.New(cfg, agent.Deps{
		NodeID: id, Dir: c.String("dir"), Export: filepath.Join(mount, export.FileName),
		ControlPlane: cp, Volume: n, Logger: log,
	})
	if err != nil {
		return nil, fmt.Errorf("LDAP agent: %w", err)
	}
	return ag, nil
}

// startProfile starts a CPU profile of the whole run into path, if set;
// the returned func ends it.
func startProfile(path string) (func(), error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("--cpu-profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("--cpu-profile: %w", err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// daemonMember starts the control-plane member the daemon embeds with
// --cluster-bind; without it, there is none (nil) and --role names the role.
func daemonMember(c *cli.Context, id string, creds *pki.Source, log *slog.Logger) (*member, error) {
	if c.String("cluster-bind") == "" {
		if c.String("role") == "" {
			return nil, fmt.Errorf("--role primary|secondary is needed without a control plane (--cluster-bind)")
		}
		log.Warn("no control plane (--cluster-bind not set): the role comes from --role alone and NOTHING prevents two primaries (split brain)")
		return nil, nil
	}
	m, err := startMember(c, "cluster-", id, filepath.Join(c.String("dir"), "raft"), creds, false, log)
	if err != nil {
		return nil, fmt.Errorf("control plane: %w", err)
	}
	if c.String("role") != "" {
		log.Warn("--role is ignored: the control plane names the role", "role", c.String("role"))
	}
	return m, nil
}

// loadAgentConfig is the LDAP agent's configuration: --agent-config's
// file, else the resource file's [agent] (nil: no agent).
func loadAgentConfig(c *cli.Context, l *loadedResource) (*agent.Config, error) {
	f := c.String("agent-config")
	if f == "" && l == nil {
		return nil, nil
	}
	var cfg *agent.Config
	if f != "" {
		c, err := agent.LoadConfig(f)
		if err != nil {
			return nil, err
		}
		cfg = &c
	} else {
		var err error
		if cfg, err = l.file.AgentConfig(l.section); err != nil || cfg == nil {
			return nil, err
		}
	}
	if c.String("cluster-bind") == "" {
		return nil, fmt.Errorf("an LDAP agent needs the control plane (--cluster-bind): it moves the role through it")
	}
	return cfg, nil
}
