package main

import (
	"bytes"
	"fmt"
	"os"
	"slices"

	"github.com/ldmirror/ldmirror/internal/fileperm"
	"github.com/ldmirror/ldmirror/pki"
	"github.com/ldmirror/ldmirror/transport"
	"github.com/urfave/cli/v2"
)

// flagNodeID is c's --node-id, or the host name; either must be a valid
// node ID (pki.ValidNodeID).
func flagNodeID(c *cli.Context) (string, error) {
	id := c.String("node-id")
	if id == "" {
		h, err := os.Hostname()
		if err != nil {
			return "", fmt.Errorf("--node-id not set and no hostname: %w", err)
		}
		id = h
	}
	if err := pki.ValidNodeID(id); err != nil {
		return "", fmt.Errorf("--node-id: %w", err)
	}
	return id, nil
}

// readSecretFile reads a shared secret; surrounding white space is not part
// of it.
func readSecretFile(path string) ([]byte, error) {
	if err := fileperm.CheckPrivate(path); err != nil {
		return nil, fmt.Errorf("--secret-file: %w", err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--secret-file: %w", err)
	}
	s := bytes.TrimSpace(b)
	if len(s) < transport.MinSecretLen {
		return nil, fmt.Errorf("--secret-file %s holds %d bytes, need at least %d", path, len(s), transport.MinSecretLen)
	}
	return s, nil
}

// oneArg returns the single positional argument named what. Flags after
// it ("promote b --force --reason X") are applied too.
func oneArg(c *cli.Context, what string) (string, error) {
	args, err := positional(c, 1, 1, what)
	if err != nil {
		return "", err
	}
	return args[0], nil
}

func lookupFlag(flags []cli.Flag, name string) cli.Flag {
	for _, f := range flags {
		if slices.Contains(f.Names(), name) {
			return f
		}
	}
	return nil
}
