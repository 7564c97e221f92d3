package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/ctl"
	"github.com/ldmirror/ldmirror/resource"
	"github.com/urfave/cli/v2"
)

// The operator's commands of the control plane: `cluster status|bootstrap|
// join|remove`, `promote`, `demote`. They talk to a member's control
// socket through package ctl.

// memberConnFlags say which member a command talks to.
func memberConnFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{
			Name:    "control",
			Usage:   "control socket `PATH` of a running member (default: <data-dir>/control.sock)",
			EnvVars: []string{"LDMIRROR_CLUSTER_CONTROL"},
		},
		&cli.StringFlag{Name: "data-dir", Usage: "data `DIR` of a running member, to find its control socket"},
		nodeIDFlag(),
		&cli.DurationFlag{
			Name:  "timeout",
			Usage: "`DURATION` the member may try to commit (e.g. 10s, 500ms); then the command fails with no quorum",
			Value: ctl.DefaultTimeout,
		},
	}
}

// memberTarget is the member and the node a promote or demote names:
// "RESOURCE [NODE]" (this node's process of the resource; NODE defaults
// to this node), or "NODE" with --control or --data-dir.
func memberTarget(c *cli.Context) (*ctl.Client, string, error) {
	args, err := positional(c, 1, 2, "RESOURCE [NODE], or NODE with --control")
	if err != nil {
		return nil, "", err
	}
	if c.String("control") != "" || c.String("data-dir") != "" || !isResource(c, args[0]) {
		if len(args) != 1 {
			return nil, "", fmt.Errorf("%s NODE --control PATH: one node, got %q (or is %s not a resource in %s?)", c.Command.Name, args, args[0], c.String("config-dir"))
		}
		mc, err := memberClient(c)
		return mc, args[0], err
	}
	l, err := loadResource(c, args[0])
	if err != nil {
		return nil, "", err
	}
	node := l.section.ID()
	switch {
	case len(args) == 2:
		node = args[1]
	case l.section.Role == resource.RoleWitness:
		return nil, "", fmt.Errorf("%s %s on the witness: name the data host, e.g. ldmirror %s %s %s", c.Command.Name, args[0], c.Command.Name, args[0], l.file.Hosts[0].ID)
	}
	return ctl.NewClient(l.controlSocket()), node, nil
}

// memberClient is the client of the member's socket c names: --control,
// --data-dir, or the resource of c's first argument.
func memberClient(c *cli.Context) (*ctl.Client, error) {
	if p := c.String("control"); p != "" {
		return ctl.NewClient(p), nil
	}
	if d := c.String("data-dir"); d != "" {
		return ctl.NewClient(filepath.Join(d, clusterControlFile)), nil
	}
	if c.NArg() > 0 && isResource(c, c.Args().First()) {
		l, err := loadResource(c, c.Args().First())
		if err != nil {
			return nil, err
		}
		return ctl.NewClient(l.controlSocket()), nil
	}
	return nil, errors.New("say which member: a resource name, --control PATH (its control socket) or --data-dir DIR")
}

const controlPlaneOnly = "Needs daemons run with --cluster-bind: their data path follows the role the control plane names."

func clusterCommand() *cli.Command {
	return &cli.Command{
		Name:  "cluster",
		Usage: "show and change the control plane's membership (see docs/cluster.md)",
		Subcommands: []*cli.Command{
			{
				Name:      "status",
				Usage:     "members, raft leader, primary, epoch, each host's disk state and forced promotions",
				ArgsUsage: "[RESOURCE]",
				Flags: append(memberConnFlags(),
					&cli.BoolFlag{Name: "json", Usage: "print JSON"},
					&cli.BoolFlag{Name: "consistent", Usage: "read the volume state through the leader (needs quorum) instead of this member's copy"},
				),
				Action: clusterStatus,
			},
			{
				Name:  "bootstrap",
				Usage: "make the member the first voter of a new cluster (once; safe to repeat)",
				Flags: memberConnFlags(),
				Action: func(c *cli.Context) error {
					return memberCommandRun(c, "bootstrapped", func(mc *ctl.Client, t time.Duration) error { return mc.Bootstrap(c.Context, t) })
				},
			},
			{
				Name:      "join",
				Usage:     "make the member join the cluster through the member at ADDR",
				ArgsUsage: "ADDR",
				Flags:     memberConnFlags(),
				Action: func(c *cli.Context) error {
					addr, err := oneArg(c, "the host:port of a member's cluster port")
					if err != nil {
						return err
					}
					return memberCommandRun(c, "joined via "+addr, func(mc *ctl.Client, t time.Duration) error { return mc.Join(c.Context, addr, t) })
				},
			},
			{
				Name:        "remove",
				Usage:       "take NODE out of the cluster (to replace a dead host; it shrinks the quorum)",
				ArgsUsage:   "NODE",
				Description: "The primary cannot be removed: demote it or fail over first.",
				Flags:       memberConnFlags(),
				Action: func(c *cli.Context) error {
					node, err := oneArg(c, "the node ID to remove")
					if err != nil {
						return err
					}
					return memberCommandRun(c, "removed "+node, func(mc *ctl.Client, t time.Duration) error { return mc.Remove(c.Context, node, t) })
				},
			},
			memberCommand("member",
				"run a data host's member without the volume (until the daemon embeds it)",
				"Same flags as 'ldmirror witness'; the member registers as a data host, which can be primary.",
				false, true),
		},
	}
}

// memberCommandRun runs do with the member's client and --timeout and
// prints done.
func memberCommandRun(c *cli.Context, done string, do func(*ctl.Client, time.Duration) error) error {
	mc, err := memberClient(c)
	if err != nil {
		return err
	}
	if err := do(mc, c.Duration("timeout")); err != nil {
		return err
	}
	fmt.Println(done)
	return nil
}

func promoteCommand() *cli.Command {
	return &cli.Command{
		Name:      "promote",
		Usage:     "make NODE primary in a new epoch (refused unless its disk is uptodate)",
		ArgsUsage: "RESOURCE [NODE] | NODE --control PATH",
		Description: "A current primary is displaced and marked outdated. --force --reason TEXT promotes a host\n" +
			"that is not uptodate: its data becomes the truth, every other copy outdated; the reason is\n" +
			"logged and shown by 'ldmirror cluster status'.\n" + controlPlaneOnly,
		Flags: append(memberConnFlags(),
			&cli.BoolFlag{Name: "force", Usage: "promote although the disk is not uptodate (accepts losing writes it lacks)"},
			&cli.StringFlag{Name: "reason", Usage: "why the promotion is forced: `TEXT` recorded in the cluster state and shown in status"},
		),
		Action: func(c *cli.Context) error {
			mc, node, err := memberTarget(c)
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
			r, err := mc.PromoteReply(c.Context, node, force, reason, c.Duration("timeout"))
			if err != nil {
				return commandError("promote", node, err)
			}
			forced := ""
			if force {
				forced = " (forced)"
			}
			fmt.Printf("%s is primary in epoch %d%s\n", node, r.Epoch, forced)
			if r.Note != "" {
				fmt.Println(r.Note)
			}
			return nil
		},
	}
}

func demoteCommand() *cli.Command {
	return &cli.Command{
		Name:      "demote",
		Usage:     "end NODE's tenure as primary: a new epoch with no primary",
		ArgsUsage: "RESOURCE [NODE] | NODE --control PATH",
		Description: "Refused unless NODE is primary in --epoch (default: the current epoch, read through the leader).\n" +
			controlPlaneOnly,
		Flags: append(memberConnFlags(),
			&cli.Uint64Flag{Name: "epoch", Usage: "the `EPOCH` NODE is primary in", DefaultText: "the current epoch"},
			&cli.BoolFlag{Name: "force", Usage: "demote NODE although its volume is mounted (checked when --control is NODE's own socket): its file system's writes then fail with I/O errors and it stays demoted until its loop device is detached"},
		),
		Action: func(c *cli.Context) error {
			mc, node, err := memberTarget(c)
			if err != nil {
				return err
			}
			epoch, err := mc.Demote(c.Context, node, cluster.Epoch(c.Uint64("epoch")), c.Bool("force"), c.Duration("timeout"))
			if err != nil {
				return commandError("demote", node, err)
			}
			fmt.Printf("%s demoted: no primary in epoch %d\n", node, epoch)
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
	if _, err := positional(c, 0, 1, "the resource's name"); err != nil {
		return err
	}
	mc, err := memberClient(c)
	if err != nil {
		return err
	}
	t := c.Duration("timeout")
	ctx, cancel := context.WithTimeout(c.Context, t+5*time.Second)
	defer cancel()
	v, err := mc.Cluster(ctx, c.Bool("consistent"), t)
	if err != nil {
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
func writeClusterView(w io.Writer, v ctl.ClusterView) {
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
