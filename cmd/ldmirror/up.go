package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/ldmirror/ldmirror/ctl"
	"github.com/ldmirror/ldmirror/resource"
)

// The verbs of a resource as a whole: up, down, adjust, config check.

func upCommand() *cli.Command {
	return &cli.Command{
		Name:      "up",
		Usage:     "run this node's part of RESOURCE in the foreground: its data host's daemon, or the witness",
		ArgsUsage: "RESOURCE [FLAGS]",
		Description: "The node finds its section of RESOURCE's file by --node-id (default: the hostname) and runs\n" +
			"'ldmirror daemon RESOURCE' on a data host, 'ldmirror witness RESOURCE' on the witness, with FLAGS\n" +
			"(theirs) overriding the file. systemd runs it as ldmirror@RESOURCE.service and\n" +
			"ldmirror-witness@RESOURCE.service; 'ldmirror down RESOURCE' stops it.",
		SkipFlagParsing: true,
		Action: func(c *cli.Context) error {
			args := c.Args().Slice()
			if len(args) == 0 || strings.HasPrefix(args[0], "-") {
				return errors.New("up takes the resource's name first: ldmirror up RESOURCE [FLAGS]")
			}
			f, err := resource.Load(c.String("config-dir"), args[0])
			if err != nil {
				return err
			}
			id, err := nodeIDOf(args[1:])
			if err != nil {
				return err
			}
			s, err := f.Section(id)
			if err != nil {
				return err
			}
			name := "daemon"
			if s.Role == resource.RoleWitness {
				name = "witness"
			}
			// Command.Run leaves the context's Command to its caller: the
			// daemon's reload and flag handling read their definitions there.
			cmd := c.App.Command(name)
			ctx := cli.NewContext(c.App, nil, c)
			ctx.Command = cmd
			return cmd.Run(ctx, append([]string{name}, args...)...)
		},
	}
}

// nodeIDOf is the node ID args give (--node-id ID or --node-id=ID), else
// $LDMIRROR_NODE_ID, else the hostname.
func nodeIDOf(args []string) (string, error) {
	for i, a := range args {
		name, v, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || name != "node-id" {
			continue
		}
		if hasValue {
			return v, nil
		}
		if i+1 < len(args) {
			return args[i+1], nil
		}
	}
	if id := os.Getenv("LDMIRROR_NODE_ID"); id != "" {
		return id, nil
	}
	return os.Hostname()
}

// resourceClient is the client of this node's process of the resource
// c's only argument names.
func resourceClient(c *cli.Context) (*loadedResource, *ctl.Client, error) {
	name, err := oneArg(c, "the resource's name")
	if err != nil {
		return nil, nil, err
	}
	l, err := loadResource(c, name)
	if err != nil {
		return nil, nil, err
	}
	return l, ctl.NewClient(l.controlSocket()), nil
}

func downCommand() *cli.Command {
	return &cli.Command{
		Name:      "down",
		Usage:     "stop this node's part of RESOURCE, as SIGTERM does, and wait until it exited",
		ArgsUsage: "RESOURCE",
		Description: "Loop devices the daemon attached are detached (one still mounted detaches at its umount),\n" +
			"writes in flight complete, the export and the control socket go. Under systemd the same as\n" +
			"'systemctl stop ldmirror@RESOURCE': systemd sees the service exit cleanly and leaves it stopped.",
		Flags: []cli.Flag{nodeIDFlag(),
			&cli.DurationFlag{Name: "timeout", Value: time.Minute, Usage: "how long to wait for the process to exit (`DURATION`)"},
		},
		Action: func(c *cli.Context) error {
			l, cl, err := resourceClient(c)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout"))
			defer cancel()
			pid, err := cl.PeerPID(ctx)
			if err != nil {
				return err
			}
			if err := cl.Stop(ctx); err != nil {
				return err
			}
			if err := waitExit(ctx, pid); err != nil {
				return fmt.Errorf("%s: %s (pid %d) did not exit: %w", l.file.Name, l.section.ID(), pid, err)
			}
			fmt.Fprintf(c.App.Writer, "%s: %s stopped\n", l.file.Name, l.section.ID())
			return nil
		},
	}
}

// waitExit waits until process pid is gone (or a zombie: exited, not yet
// reaped by its parent).
func waitExit(ctx context.Context, pid int) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return nil
		}
		// pid (comm) state ...: the state follows the last ')'.
		if i := strings.LastIndexByte(string(b), ')'); i >= 0 && strings.HasPrefix(string(b[i:]), ") Z") {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

func adjustCommand() *cli.Command {
	return &cli.Command{
		Name:      "adjust",
		Usage:     "apply RESOURCE's changed file to the running process, as SIGHUP does, and say what applied",
		ArgsUsage: "RESOURCE",
		Description: "The log level, the resync rates (at once, to a running resync too), the probe settings and\n" +
			"the certificate files' contents apply; any other change needs a restart and is listed as not\n" +
			"applied. Flags given to the process's command line keep overriding the file.",
		Flags: []cli.Flag{nodeIDFlag()},
		Action: func(c *cli.Context) error {
			l, cl, err := resourceClient(c)
			if err != nil {
				return err
			}
			rep, err := cl.Reload(c.Context)
			if err != nil {
				return err
			}
			w := c.App.Writer
			fmt.Fprintf(w, "%s: %s reloaded\n", l.file.Name, l.section.ID())
			for _, a := range rep.Applied {
				fmt.Fprintf(w, "  applied      %s\n", a)
			}
			for _, a := range rep.NotApplied {
				fmt.Fprintf(w, "  not applied  %s (restart to apply)\n", a)
			}
			for _, e := range rep.Errors {
				fmt.Fprintf(w, "  error        %s\n", e)
			}
			if len(rep.Errors) > 0 {
				return errors.New("reload incomplete: the process keeps what it had for the errors above")
			}
			return nil
		},
	}
}

func configCommand() *cli.Command {
	return &cli.Command{
		Name:  "config",
		Usage: "check resource files",
		Subcommands: []*cli.Command{{
			Name:      "check",
			Usage:     "check RESOURCE's file and print what this node runs with, like drbdadm dump",
			ArgsUsage: "[RESOURCE...]",
			Description: "Without RESOURCE, every resource in --config-dir. Each error names the file, the line and\n" +
				"the fix. For this node's section it prints each flag of the command 'ldmirror up' runs, its\n" +
				"value and where it comes from: a key of the file, or the command's default.",
			Flags: []cli.Flag{nodeIDFlag()},
			Action: func(c *cli.Context) error {
				names, err := positional(c, 0, 64, "resource names")
				if err != nil {
					return err
				}
				if len(names) == 0 {
					var err error
					if names, err = resource.Names(c.String("config-dir")); err != nil {
						return err
					}
					if len(names) == 0 {
						return fmt.Errorf("no resource files (*%s) in %s", resource.Ext, c.String("config-dir"))
					}
				}
				failed := 0
				for i, name := range names {
					if i > 0 {
						fmt.Fprintln(c.App.Writer)
					}
					if err := checkResource(c, c.App.Writer, name); err != nil {
						fmt.Fprintln(c.App.ErrWriter, err)
						failed++
					}
				}
				if failed > 0 {
					return fmt.Errorf("%d of %d resource files have errors", failed, len(names))
				}
				return nil
			},
		}},
	}
}

// checkResource checks one resource file and prints what this node runs
// with.
func checkResource(c *cli.Context, w io.Writer, name string) error {
	l, err := loadResource(c, name)
	if err != nil {
		return err
	}
	f, s := l.file, l.section
	cmdName, set := "daemon", daemonSettings(f, s)
	about := fmt.Sprintf("data host %s; peer %s, witness %s", s.Host.ID, s.Peer.ID, s.Witness.ID)
	if s.Role == resource.RoleWitness {
		cmdName, set = "witness", witnessSettings(f, s)
		about = fmt.Sprintf("witness %s of data hosts %s and %s", s.Witness.ID, f.Hosts[0].ID, f.Hosts[1].ID)
	}
	cmd := c.App.Command(cmdName)
	values, from := map[string]string{}, map[string]string{}
	for _, st := range set {
		values[st.flag], from[st.flag] = st.value, st.key
	}
	ec, err := commandContext(c.App, cmd, values)
	if err != nil {
		return fmt.Errorf("%s: %w", f.Path, err)
	}
	if s.Role == resource.RoleData {
		if _, err := f.AgentConfig(s); err != nil {
			return err
		}
	}
	fmt.Fprintf(w, "%s: %s is valid; this node is %s\n", name, f.Path, about)
	fmt.Fprintf(w, "ldmirror up %s runs ldmirror %s %s with:\n", name, cmdName, name)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, fl := range cmd.Flags {
		n := fl.Names()[0]
		if hidden(fl) {
			continue
		}
		v := flagString(ec, n)
		src := "default"
		if k, ok := from[n]; ok {
			src = k
		}
		if v == "" {
			v = "-"
		}
		fmt.Fprintf(tw, "  --%s\t%s\t%s\n", n, v, src)
	}
	tw.Flush()
	if a := f.Agent; a != nil && s.Role == resource.RoleData {
		fmt.Fprintf(w, "LDAP agent: probes %s (peer) and %s (own); %d promote and %d demote hooks; failback %s\n",
			s.Peer.LDAP, s.Host.LDAP, len(a.Promote), len(a.Demote), or(a.Failback, "manual"))
	}
	return nil
}

// hidden reports whether fl is left out of help.
func hidden(fl cli.Flag) bool {
	v, ok := fl.(cli.VisibleFlag)
	return ok && !v.IsVisible()
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
