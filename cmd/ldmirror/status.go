package main

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"

	"github.com/ldmirror/ldmirror/ctl"
	"github.com/ldmirror/ldmirror/export"
	"github.com/ldmirror/ldmirror/volume"
	"github.com/urfave/cli/v2"
)

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show role, link, replication state, dirty blocks and counters of a running host",
		Description: `The replication row is one of:
   replicating      every write reaches the peer (sync) or its journal ships in order (async)
   logging          the peer is unreachable; writes go on locally and their blocks are
                    recorded as dirty in the scoreboard, for a resync when it returns
   journal-catchup  async, after a disconnect or a restart of the primary: the journal
                    still covers the gap and is replayed in order, so the peer stays
                    crash-consistent
   resyncing        the dirty blocks are copied to the peer: percent, rate and ETA;
                    "slowed to the minimum rate" while the application writes
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
			volumeDirFlag, controlFlag,
			&cli.BoolFlag{Name: "json", Usage: "print JSON (sizes in bytes)"},
		},
		Action: func(c *cli.Context) error {
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
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			writeStatus(os.Stdout, st)
			return nil
		},
	}
}
