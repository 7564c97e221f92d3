package main

import (
	"encoding/json"
	"os"

	"github.com/urfave/cli/v2"
)

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show role, link, replication state, dirty blocks and counters of a running host",
		Flags: []cli.Flag{
			volumeDirFlag, controlFlag,
			&cli.BoolFlag{Name: "json", Usage: "print JSON (sizes in bytes)"},
		},
		Action: func(c *cli.Context) error {
			st, err := fetchStatus(c)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			st.WriteText(os.Stdout)
			return nil
		},
	}
}
