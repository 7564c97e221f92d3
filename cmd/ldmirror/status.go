package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/ldmirror/ldmirror/ctl"
	"github.com/ldmirror/ldmirror/events"
	"github.com/ldmirror/ldmirror/export"
	"github.com/ldmirror/ldmirror/node"
	"github.com/ldmirror/ldmirror/resource"
	"github.com/ldmirror/ldmirror/volume"
)

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:      "status",
		Usage:     "show role, link, replication state, dirty blocks and counters of a running host",
		ArgsUsage: "[RESOURCE]",
		Description: `Without RESOURCE, --dir or --control: every resource in --config-dir (the witness's: the
control plane's view). --watch redraws it every --interval: on a terminal the whole status and
a progress bar of a running resync, otherwise one line per change.

The replication row is one of:
   replicating      every write reaches the peer (sync) or its journal ships in order (async)
   logging          the peer is unreachable; writes go on locally and their blocks are
                    recorded as dirty in the scoreboard, for a resync when it returns
   journal-catchup  async, after a disconnect or a restart of the primary: the journal
                    still covers the gap and is replayed in order, so the peer stays
                    crash-consistent
   resyncing        the dirty blocks are copied to the peer: percent, rate and ETA;
                    "slowed to the minimum rate" while the application writes
   resync-target    this host is being resynced: the primary's percent, rate and ETA
   suspended        with a control plane and no quorum: writes the peer lacks wait, none is
                    acknowledged, until "peer outdated" commits
   fenced: writes refused
                    the control plane refused to mark the peer outdated: this host was
                    deposed; such writes fail until it steps down
   waiting for ...  a secondary without a primary, or a host not yet named by the control plane
The fallback row says why an async journal could not cover a disconnect or a restart
(a bitmap resync follows). The control row shows epoch, named primary and raft leader (and
the epoch a deposed primary still serves in), or NONE without a control plane. A split
brain shows in "last error" with the command that ends it.`,
		Flags: []cli.Flag{
			volumeDirFlag, controlFlag, nodeIDFlag(),
			&cli.BoolFlag{Name: "json", Usage: "print JSON (sizes in bytes)"},
			&cli.BoolFlag{Name: "watch", Usage: "redraw every --interval until interrupted"},
			&cli.DurationFlag{Name: "interval", Value: time.Second, Usage: "`DURATION` between two redraws of --watch"},
		},
		Action: func(c *cli.Context) error {
			args, err := positional(c, 0, 1, "the resource's name")
			if err != nil {
				return err
			}
			if len(args) == 1 {
				l, err := loadResource(c, args[0])
				if err != nil {
					return err
				}
				if l.section.Role == resource.RoleWitness {
					return showMember(c, c.App.Writer, ctl.NewClient(l.controlSocket()))
				}
				if !c.IsSet("dir") && !c.IsSet("control") {
					if err := apply(c, volumeSettings(l.file, l.section)); err != nil {
						return err
					}
				}
			} else if c.String("dir") == "" && c.String("control") == "" {
				return statusAll(c)
			}
			hc, err := hostClient(c)
			if err != nil {
				return err
			}
			if c.Bool("watch") {
				return watchStatus(c.Context, os.Stdout, hc, c.Duration("interval"))
			}
			st, err := fetchStatus(c)
			if errors.Is(err, ctl.ErrNoProcess) && c.String("dir") != "" {
				if l := export.LeftoversOf(filepath.Join(c.String("dir"), volume.ExportDir)); !l.Empty() {
					writeLeftovers(os.Stdout, c.String("dir"), l)
				}
			}
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(c.App.Writer, st)
			}
			writeStatus(c.App.Writer, st)
			return nil
		},
	}
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// showMember prints a member's view of the control plane.
func showMember(c *cli.Context, w io.Writer, mc *ctl.Client) error {
	ctx, cancel := context.WithTimeout(c.Context, 10*time.Second)
	defer cancel()
	v, err := mc.Cluster(ctx, false, 5*time.Second)
	if err != nil {
		return err
	}
	if c.Bool("json") {
		return printJSON(w, v)
	}
	writeClusterView(w, v)
	return nil
}

// statusAll is `status` of every resource in --config-dir.
func statusAll(c *cli.Context) error {
	dir := c.String("config-dir")
	names, err := resource.Names(dir)
	if err != nil {
		return err
	}
	if len(names) == 0 {
		return fmt.Errorf("say which volume: a resource name, --dir DIR or --control PATH (no resource files in %s)", dir)
	}
	w := c.App.Writer
	all := map[string]any{}
	failed := 0
	for i, name := range names {
		if !c.Bool("json") {
			if i > 0 {
				fmt.Fprintln(w)
			}
			fmt.Fprintf(w, "%s:\n", name)
		}
		var v any
		err := func() error {
			l, err := loadResource(c, name)
			if err != nil {
				return err
			}
			cl := ctl.NewClient(l.controlSocket())
			ctx, cancel := context.WithTimeout(c.Context, 10*time.Second)
			defer cancel()
			if l.section.Role == resource.RoleWitness {
				cv, err := cl.Cluster(ctx, false, 5*time.Second)
				v = cv
				if err == nil && !c.Bool("json") {
					writeClusterView(w, cv)
				}
				return notRunning(name, l, err)
			}
			st, err := cl.Status(ctx)
			v = st
			if err == nil && !c.Bool("json") {
				writeStatus(w, st)
			}
			return notRunning(name, l, err)
		}()
		if err != nil {
			failed++
			v = map[string]string{"error": err.Error()}
			if !c.Bool("json") {
				fmt.Fprintf(w, "  %v\n", err)
			}
		}
		all[name] = v
	}
	if c.Bool("json") {
		if err := printJSON(w, all); err != nil {
			return err
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d resources not shown", failed, len(names))
	}
	return nil
}

// notRunning says how to start a resource whose process does not answer.
func notRunning(name string, l *loadedResource, err error) error {
	if !errors.Is(err, ctl.ErrNoProcess) {
		return err
	}
	unit := "ldmirror@" + name
	if l.section.Role == resource.RoleWitness {
		unit = "ldmirror-witness@" + name
	}
	return fmt.Errorf("not running: start it with systemctl start %s (or ldmirror up %s)", unit, name)
}

// watchStatus redraws the host's status every interval until ctx ends: on
// a terminal the whole status under a progress bar of a running resync,
// otherwise one line each time the state changes (or the resync moves).
func watchStatus(ctx context.Context, out *os.File, hc *ctl.Client, interval time.Duration) error {
	term := isTerminal(out)
	t := time.NewTicker(interval)
	defer t.Stop()
	last := ""
	for {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, err := hc.Status(rctx)
		cancel()
		now := time.Now().Format(time.TimeOnly)
		switch {
		case term:
			var b strings.Builder
			b.WriteString("\x1b[H\x1b[2J") // home, clear the screen
			fmt.Fprintf(&b, "%s  ldmirror status, every %v (Ctrl-C ends)\n\n", now, interval)
			if err != nil {
				fmt.Fprintf(&b, "%v\n", err)
			} else {
				if r := events.ResyncOf(st); r != nil {
					b.WriteString(progressBar(r, terminalWidth(out)) + "\n\n")
				}
				writeStatus(&b, st)
			}
			_, _ = io.WriteString(out, b.String())
		default:
			line := ""
			if err != nil {
				line = err.Error()
			} else {
				line = summaryLine(st)
			}
			if line != last {
				fmt.Fprintf(out, "%s %s\n", now, line)
				last = line
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// progressBar draws r in width columns:
// "resync target [#######.............]  24.1%  4.0 MiB/s  ETA 12 s".
func progressBar(r *events.Resync, width int) string {
	label := "resync " + r.Side
	tail := fmt.Sprintf(" %5.1f%%  ETA %.0f s", r.Percent, r.ETASeconds)
	bar := max(width-len(label)-len(tail)-3, 10)
	done := int(float64(bar) * r.Percent / 100)
	done = min(max(done, 0), bar)
	return label + " [" + strings.Repeat("#", done) + strings.Repeat(".", bar-done) + "]" + tail
}

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// terminalWidth is f's width in columns, 80 if it says none.
func terminalWidth(f *os.File) int {
	ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ)
	if err != nil || ws.Col == 0 {
		return 80
	}
	return int(ws.Col)
}

func eventsCommand() *cli.Command {
	return &cli.Command{
		Name:      "events",
		Usage:     "print the host's state changes as they happen, one JSON object a line",
		ArgsUsage: "[RESOURCE]",
		Description: "The first line is the state (event \"exists\"); then one line per change of role, epoch,\n" +
			"primary, link, replication, disk or peer_disk (event \"change\", with what, from, to), a running\n" +
			"resync's progress every --progress (event \"resync\", on its source and its target), the LDAP\n" +
			"agent's failovers, swaps and hooks, a split brain, and \"stopping\" when the daemon stops.\n" +
			"--now prints the state and exits, like drbdsetup events2 --now. docs/operations.md, \"Events\".",
		Flags: []cli.Flag{
			volumeDirFlag, controlFlag, nodeIDFlag(),
			&cli.BoolFlag{Name: "now", Usage: "print the current state and exit"},
			&cli.DurationFlag{Name: "progress", Value: events.DefaultProgress, Usage: "`DURATION` between two progress events of a running resync"},
		},
		Action: onVolume(func(c *cli.Context) error {
			hc, err := hostClient(c)
			if err != nil {
				return err
			}
			enc := json.NewEncoder(c.App.Writer)
			last := ""
			err = hc.Events(c.Context, c.Bool("now"), c.Duration("progress"), func(e events.Event) error {
				last = e.Kind
				return enc.Encode(e)
			})
			if err == nil && !c.Bool("now") && last != events.KindStopping {
				err = fmt.Errorf("the daemon on %s stopped answering", hc.Path())
			}
			return err
		}),
	}
}

// fetchStatus is the status of the host c's --dir or --control names.
func fetchStatus(c *cli.Context) (node.Status, error) {
	hc, err := hostClient(c)
	if err != nil {
		return node.Status{}, err
	}
	ctx, cancel := context.WithTimeout(c.Context, 5*time.Second)
	defer cancel()
	return hc.Status(ctx)
}
