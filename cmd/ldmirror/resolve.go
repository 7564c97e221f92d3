package main

import (
	"errors"
	"fmt"

	"github.com/ldmirror/ldmirror/node"
	"github.com/urfave/cli/v2"
)

func resolveCommand() *cli.Command {
	return &cli.Command{
		Name:  "resolve",
		Usage: "resolve a split brain by discarding this host's changes",
		Description: "Run it, with the daemon stopped, on the host whose writes since the split are to be thrown away.\n" +
			"Then start it as secondary: the other host, as primary, copies the whole volume to it.",
		ArgsUsage: "[RESOURCE]",
		Flags: []cli.Flag{
			dirFlag, nodeIDFlag(),
			&cli.BoolFlag{Name: "discard-local", Usage: "give up the data written on this host since the hosts last agreed"},
		},
		Action: onVolume(func(c *cli.Context) error {
			if c.String("dir") == "" {
				return errors.New("say which volume: a resource name or --dir DIR")
			}
			if !c.Bool("discard-local") {
				return errors.New("say what to give up: --discard-local (the only resolution so far)")
			}
			m, err := node.DiscardLocal(c.String("dir"))
			if err != nil {
				return err
			}
			fmt.Printf("discarded the local changes of volume %s; start this host as secondary to be resynced in full\n", m.VolumeUUID)
			return nil
		}),
	}
}
