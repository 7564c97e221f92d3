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
		Flags: []cli.Flag{
			dirFlag,
			&cli.BoolFlag{Name: "discard-local", Usage: "give up the data written on this host since the hosts last agreed"},
		},
		Action: func(c *cli.Context) error {
			if !c.Bool("discard-local") {
				return errors.New("say what to give up: --discard-local (the only resolution so far)")
			}
			m, err := node.DiscardLocal(c.String("dir"))
			if err != nil {
				return err
			}
			fmt.Printf("discarded the local changes of volume %s; start this host as secondary to be resynced in full\n", m.VolumeUUID)
			return nil
		},
	}
}
