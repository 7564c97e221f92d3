// Command ldmirror mirrors a directory server's data volume between two hosts
// and is also the operator's CLI for it.
package main

import (
	"fmt"
	"os"

	"github.com/urfave/cli/v2"
)

func main() {
	app := &cli.App{
		Name:  "ldmirror",
		Usage: "block-level mirroring and failover for a directory server's volume",
		Commands: []*cli.Command{
			initCommand(),
			daemonCommand(),
			attachCommand(),
			detachCommand(),
			attachDiskCommand(),
			statusCommand(),
			resolveCommand(),
			verifyCommand(),
			resyncCommand(),
			retrierCommand(),
			witnessCommand(),
			clusterCommand(),
			promoteCommand(),
			demoteCommand(),
			swapCommand(),
			agentCommand(),
			pkiCommand(),
		},
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "ldmirror:", err)
		os.Exit(1)
	}
}
