package main

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"

	"github.com/ldmirror/ldmirror/internal/fileperm"
	"github.com/ldmirror/ldmirror/pki"
	"github.com/ldmirror/ldmirror/transport"
	"github.com/urfave/cli/v2"
)

// flagLogger is a text logger on stderr at the level of c's --log-level.
func flagLogger(c *cli.Context) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})), nil
}

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
// it ("promote b --force --reason X") are applied too: urfave/cli stops
// parsing flags at the first argument.
func oneArg(c *cli.Context, what string) (string, error) {
	if c.NArg() < 1 {
		return "", fmt.Errorf("%s takes one argument, %s", c.Command.Name, what)
	}
	rest := c.Args().Tail()
	for len(rest) > 0 {
		tok := rest[0]
		rest = rest[1:]
		name, value, hasValue := strings.Cut(strings.TrimLeft(tok, "-"), "=")
		if !strings.HasPrefix(tok, "-") || name == "" {
			return "", fmt.Errorf("%s takes one argument, %s; %q is one too many", c.Command.Name, what, tok)
		}
		f := lookupFlag(c.Command.Flags, name)
		if f == nil {
			return "", fmt.Errorf("%s: unknown flag %s", c.Command.Name, tok)
		}
		if _, isBool := f.(*cli.BoolFlag); isBool && !hasValue {
			value, hasValue = "true", true
		}
		if !hasValue {
			if len(rest) == 0 {
				return "", fmt.Errorf("%s: flag %s needs a value", c.Command.Name, tok)
			}
			value, rest = rest[0], rest[1:]
		}
		if err := c.Set(name, value); err != nil {
			return "", fmt.Errorf("%s: %s: %w", c.Command.Name, tok, err)
		}
	}
	return c.Args().First(), nil
}

func lookupFlag(flags []cli.Flag, name string) cli.Flag {
	for _, f := range flags {
		if slices.Contains(f.Names(), name) {
			return f
		}
	}
	return nil
}
