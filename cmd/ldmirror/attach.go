package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/ldmirror/ldmirror/ctl"
	"github.com/ldmirror/ldmirror/export"
	"github.com/ldmirror/ldmirror/volume"
	"github.com/urfave/cli/v2"
)

var controlFlag = &cli.StringFlag{
	Name:  "control",
	Usage: "control socket `PATH` (default: control.sock in --dir)",
}

var volumeDirFlag = &cli.StringFlag{
	Name:    "dir",
	Usage:   "volume `DIR`",
	EnvVars: []string{"LDMIRROR_DIR"},
}

func controlPath(c *cli.Context) (string, error) {
	if p := c.String("control"); p != "" {
		return p, nil
	}
	if d := c.String("dir"); d != "" {
		return filepath.Join(d, volume.ControlFile), nil
	}
	return "", errors.New("say which volume: --dir DIR or --control PATH")
}

// hostClient is the client of the control socket of the volume c names.
func hostClient(c *cli.Context) (*ctl.Client, error) {
	path, err := controlPath(c)
	if err != nil {
		return nil, err
	}
	return ctl.NewClient(path), nil
}

func attachCommand() *cli.Command {
	return &cli.Command{
		Name:      "attach",
		Usage:     "bind the primary's FUSE export to a loop device and print the device",
		ArgsUsage: "[RESOURCE]",
		Description: "The daemon binds it (LOOP_CONFIGURE, direct I/O) and remembers it: when it stops it detaches\n" +
			"it (one still mounted detaches at its umount).",
		Flags: []cli.Flag{volumeDirFlag, controlFlag, nodeIDFlag()},
		Action: onVolume(func(c *cli.Context) error {
			hc, err := hostClient(c)
			if err != nil {
				return err
			}
			dev, err := hc.Attach(c.Context)
			if err != nil {
				return err
			}
			fmt.Println(dev)
			return nil
		}),
	}
}

func detachCommand() *cli.Command {
	return &cli.Command{
		Name:      "detach",
		Usage:     "unbind the loop device of the primary's export",
		ArgsUsage: "[RESOURCE | /dev/loopN...]",
		Flags:     []cli.Flag{volumeDirFlag, controlFlag, nodeIDFlag()},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 && isResource(c, c.Args().First()) {
				return onVolume(detach)(c)
			}
			return detach(c)
		},
	}
}

// detach is `detach`: the devices named, or those of the export.
func detach(c *cli.Context) error {
	devs := c.Args().Slice()
	if len(devs) > 0 && isResource(c, devs[0]) {
		devs = nil
	}
	if len(devs) == 0 {
		st, err := fetchStatus(c)
		switch {
		case errors.Is(err, ctl.ErrNoProcess) && c.String("dir") != "":
			return detachLeftovers(c.String("dir"))
		case err != nil:
			return err
		case len(st.LoopDevices) == 0:
			return fmt.Errorf("no loop device is attached to %s", st.Export)
		}
		devs = st.LoopDevices
	}
	for _, d := range devs {
		deferred, err := export.DetachLoop(d)
		if err != nil {
			return err
		}
		if deferred {
			fmt.Println(d, "is still in use (mounted?): it detaches when its last user closes it")
		} else {
			fmt.Println("detached", d)
		}
	}
	return nil
}

// detachLeftovers clears what a daemon killed in dir left: the loop
// devices bound to its export (once their file systems are unmounted) and
// the dead FUSE mount.
func detachLeftovers(dir string) error {
	exp := filepath.Join(dir, volume.ExportDir)
	l := export.LeftoversOf(exp)
	if len(l.Mounts) > 0 {
		return fmt.Errorf("no daemon runs on %s and its loop device %s is mounted on %s: umount it first",
			dir, strings.Join(l.Loops, ", "), strings.Join(l.Mounts, ", "))
	}
	for _, d := range l.Loops {
		if _, err := export.DetachLoop(d); err != nil {
			return err
		}
		fmt.Println("detached", d)
	}
	if l.DeadMount {
		if err := export.ClearDeadMount(exp); err != nil {
			return err
		}
		fmt.Println("unmounted the dead export", exp)
	}
	if l.Empty() {
		fmt.Println("no daemon runs on", dir, "and nothing is left over")
	}
	return nil
}
