package main

import (
	"cmp"
	"fmt"
	"os"
	"time"

	"github.com/urfave/cli/v2"
)

func verifyCommand() *cli.Command {
	return &cli.Command{
		Name:  "verify",
		Usage: "compare every block with the peer by checksum and resync the ones that differ",
		Description: "Runs online on the primary: writes continue, each 1 MiB run is locked only while both hosts\n" +
			"checksum it (a keyed SHA-256 digest per block). Progress shows in 'ldmirror status'.",
		ArgsUsage: "[RESOURCE]",
		Flags:     []cli.Flag{volumeDirFlag, controlFlag, nodeIDFlag()},
		Action: onVolume(func(c *cli.Context) error {
			hc, err := hostClient(c)
			if err != nil {
				return err
			}
			res, err := hc.Verify(c.Context)
			if err != nil {
				return fmt.Errorf("verify: %w", err)
			}
			fmt.Printf("checked %d blocks in %.1f s: %d out of sync", res.Blocks, res.Seconds, res.OutOfSync)
			if len(res.FirstFound) > 0 {
				fmt.Printf(" (blocks %v", res.FirstFound)
				if res.OutOfSync > uint64(len(res.FirstFound)) {
					fmt.Print(" ...")
				}
				fmt.Print(")")
			}
			if res.Repaired {
				fmt.Print("; resynced from this host")
			}
			fmt.Println()
			return nil
		}),
	}
}

func resyncCommand() *cli.Command {
	return &cli.Command{
		Name:  "resync",
		Usage: "copy the out-of-sync blocks to the peer now",
		Description: "Runs on the primary while writes continue. --full copies every block (after the peer's disk was\n" +
			"replaced); --checksum compares block checksums first and sends only the blocks that differ.\n" +
			"--abort runs on a resync's target whose source is gone: it discards the staged resync, and the\n" +
			"volume keeps its data as of its disconnect (docs/operations.md, \"The source died during a resync\").",
		ArgsUsage: "[RESOURCE]",
		Flags: []cli.Flag{
			volumeDirFlag, controlFlag, nodeIDFlag(),
			&cli.BoolFlag{Name: "full", Usage: "mark every block out of sync first"},
			&cli.BoolFlag{Name: "checksum", Usage: "send only blocks whose digest differs on the peer"},
			&cli.BoolFlag{Name: "abort", Usage: "on the target: discard the staged resync of a source that is gone"},
		},
		Action: onVolume(func(c *cli.Context) error {
			hc, err := hostClient(c)
			if err != nil {
				return err
			}
			if c.Bool("abort") {
				res, err := hc.AbortResync(c.Context)
				if err != nil {
					return fmt.Errorf("resync --abort: %w", err)
				}
				fmt.Printf("resync aborted: this host keeps its data as of %s (outdated); %d staged blocks (%.1f MiB) from %s discarded, resynced when it returns\n",
					res.ConsistentAsOf.UTC().Format(time.RFC3339), res.Blocks, float64(res.Bytes)/(1<<20), cmp.Or(res.Source, "the source"))
				return nil
			}
			res, err := hc.Resync(c.Context, c.Bool("full"), c.Bool("checksum"))
			if err != nil {
				return fmt.Errorf("resync: %w", err)
			}
			fmt.Printf("resynced %d blocks in %.1f s", res.Blocks, res.Seconds)
			if c.Bool("checksum") {
				fmt.Printf(", %d of them equal and not sent", res.Skipped)
			}
			fmt.Println()
			return nil
		}),
	}
}

func swapCommand() *cli.Command {
	return &cli.Command{
		Name:  "swap",
		Usage: "hand the primary role to the peer with no lost write (run on the primary)",
		Description: "New writes wait, those in flight complete, both hosts flush; only if the peer then holds\n" +
			"every write does the control plane move the role to it, in a new epoch. With an LDAP agent the\n" +
			"directory service is stopped first and started on the peer after. Refused while the peer is\n" +
			"not in sync (status shows it uptodate when it is).\n" + controlPlaneOnly,
		ArgsUsage: "[RESOURCE]",
		Flags: []cli.Flag{volumeDirFlag, controlFlag, nodeIDFlag(),
			&cli.BoolFlag{Name: "force", Usage: "swap although the volume is mounted here (without an LDAP agent): the mounted file system's writes then fail with I/O errors and this host stays demoted until its loop device is detached"},
		},
		Action: onVolume(func(c *cli.Context) error {
			hc, err := hostClient(c)
			if err != nil {
				return err
			}
			res, err := hc.Swap(c.Context, c.Bool("force"))
			if err != nil {
				return fmt.Errorf("swap: %w", err)
			}
			fmt.Printf("swapped: the peer is primary in epoch %d; this host becomes secondary once its export is released\n", res.Epoch)
			return nil
		}),
	}
}

func agentCommand() *cli.Command {
	return &cli.Command{
		Name:  "agent",
		Usage: "the LDAP agent of a running daemon (daemon --agent-config)",
		Subcommands: []*cli.Command{{
			Name:  "retry",
			Usage: "run again the promote or demote hooks that failed, once their cause is fixed",
			Description: "A failed hook stops the agent in state 'failed' and it asks for no role change until\n" +
				"retried. Retry reruns the sequence the host's current role needs and prints the agent's state.",
			ArgsUsage: "[RESOURCE]",
			Flags:     []cli.Flag{volumeDirFlag, controlFlag, nodeIDFlag()},
			Action: onVolume(func(c *cli.Context) error {
				hc, err := hostClient(c)
				if err != nil {
					return err
				}
				st, err := hc.RetryAgent(c.Context)
				if err != nil {
					return fmt.Errorf("agent retry: %w", err)
				}
				writeAgentStatus(os.Stdout, st)
				return nil
			}),
		}},
	}
}
