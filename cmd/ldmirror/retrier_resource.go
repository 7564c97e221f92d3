package main

import (
	"errors"

	"github.com/urfave/cli/v2"

	"github.com/ldmirror/ldmirror/resource"
)

// retrierFromResource lets `ldmirror retrier RESOURCE` take its settings
// from the resource file: the first data host's ldap URL is the primary,
// the second's the secondary, and [retrier]'s keys set the flags of their
// names. It runs on client hosts, which have no section of their own.
func retrierFromResource(cmd *cli.Command) *cli.Command {
	run := cmd.Action
	for _, f := range cmd.Flags {
		if s, ok := f.(*cli.StringFlag); ok && s.Name == "primary" {
			s.Required = false // the resource file may give it
		}
	}
	cmd.ArgsUsage = "[RESOURCE]"
	cmd.Action = func(c *cli.Context) error {
		args, err := positional(c, 0, 1, "the resource's name")
		if err != nil {
			return err
		}
		if len(args) == 1 {
			f, err := resource.Load(c.String("config-dir"), args[0])
			if err != nil {
				return err
			}
			s, err := retrierSettings(f, cmd.Flags)
			if err != nil {
				return err
			}
			if err := apply(c, s); err != nil {
				return err
			}
		}
		if c.String("primary") == "" {
			return errors.New("say which servers: a resource name (its hosts' ldap), or --primary URL")
		}
		return run(c)
	}
	return cmd
}
