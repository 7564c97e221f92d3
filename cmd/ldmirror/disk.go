package main

import (
	"errors"
	"fmt"

	"github.com/ldmirror/ldmirror/ctl"
	"github.com/ldmirror/ldmirror/volume"
	"github.com/urfave/cli/v2"
)

func attachDiskCommand() *cli.Command {
	return &cli.Command{
		Name:  "attach-disk",
		Usage: "take back this host's disk after it failed and was repaired; the primary then resyncs it",
		Description: "After an I/O error (EIO, ENOSPC, ...) a host stops using its disk: status shows\n" +
			"disk failed. Repair it (free space, replace the device), then run attach-disk on\n" +
			"that host. The primary resyncs the blocks written while the disk was out; with\n" +
			"--full, every block (a replaced, blank disk). Without a running daemon it only\n" +
			"checks the disk and clears the failure (docs/operations.md, \"A failing disk\").",
		ArgsUsage: "[RESOURCE]",
		Flags: []cli.Flag{volumeDirFlag, controlFlag, nodeIDFlag(),
			&cli.BoolFlag{Name: "full", Usage: "resync every block: the disk was replaced, not repaired (needs the daemon running)"},
		},
		Action: onVolume(func(c *cli.Context) error {
			hc, err := hostClient(c)
			if err != nil {
				return err
			}
			err = hc.AttachDisk(c.Context, c.Bool("full"))
			if errors.Is(err, ctl.ErrNoProcess) && c.String("dir") != "" {
				if c.Bool("full") {
					return errors.New("--full needs the daemon running: it records every block for the primary to resync; start the daemon, then run attach-disk --full")
				}
				failed, err := volume.ClearDiskFailure(c.String("dir"))
				if err != nil {
					return err
				}
				fmt.Printf("disk checked; cleared the failure %q; start the daemon\n", failed)
				return nil
			}
			if err != nil {
				return err
			}
			fmt.Println("disk attached: the primary resyncs it once it reconnects (ldmirror status shows the progress)")
			return nil
		}),
	}
}
