// Command ldmirror mirrors a directory server's data volume between two hosts
// and is also the operator's CLI for it.
package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v2"
)

func main() {
	if err := newApp().Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "ldmirror:", err)
		os.Exit(1)
	}
}

// newApp is the CLI: every command, the man page and the shell
// completions are generated from it.
func newApp() *cli.App {
	cli.VersionPrinter = printVersion
	app := &cli.App{
		Name:                 "ldmirror",
		Usage:                "block-level mirroring and failover for a directory server's volume",
		Version:              buildVersion().Version,
		EnableBashCompletion: true,
		Flags:                []cli.Flag{configDirFlag},
		Description: "Every verb takes a resource's name: its file, /etc/ldmirror/RESOURCE.toml, describes the\n" +
			"volume and its three nodes, and each node finds its section by --node-id (default: the hostname).\n" +
			"Flags override the file. docs/operations.md describes every command; README.md how to install\n" +
			"and run a pair.",
		Commands: []*cli.Command{
			initCommand(),
			upCommand(),
			downCommand(),
			adjustCommand(),
			configCommand(),
			statusCommand(),
			eventsCommand(),
			daemonCommand(),
			attachCommand(),
			detachCommand(),
			attachDiskCommand(),
			resolveCommand(),
			verifyCommand(),
			resyncCommand(),
			retrierFromResource(retrierCommand()),
			witnessCommand(),
			clusterCommand(),
			promoteCommand(),
			demoteCommand(),
			swapCommand(),
			agentCommand(),
			pkiCommand(),
			generateCommand(),
		},
	}
	for _, c := range app.Commands {
		completeResources(c)
	}
	return app
}

// completeResources makes shell completion offer resource names where c
// (or a subcommand) takes one.
func completeResources(c *cli.Command) {
	for _, s := range c.Subcommands {
		completeResources(s)
	}
	if !strings.Contains(c.ArgsUsage, "RESOURCE") {
		return
	}
	c.BashComplete = func(ctx *cli.Context) {
		if ctx.NArg() == 0 {
			names, _ := resourceNames(ctx)
			for _, n := range names {
				fmt.Fprintln(ctx.App.Writer, n)
			}
		}
		cli.DefaultCompleteWithFlags(c)(ctx)
	}
}
