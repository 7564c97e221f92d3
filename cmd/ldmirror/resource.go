package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/ldmirror/ldmirror/resource"
	"github.com/ldmirror/ldmirror/volume"
)

// A resource file (package resource) gives a command the values of its
// flags: the command line's flags override them. Every verb takes the
// resource's name as its first argument (`ldmirror status r0`); the node
// finds its section by --node-id (LDMIRROR_NODE_ID), or its hostname.

// configDirFlag is the app's --config-dir: where resource files are.
var configDirFlag = &cli.StringFlag{
	Name:    "config-dir",
	Usage:   "`DIR` of the resource files, RESOURCE.toml",
	Value:   resource.DefaultDir,
	EnvVars: []string{"LDMIRROR_CONFIG_DIR"},
}

// nodeIDFlag is the node ID of commands that find their section in a
// resource file.
func nodeIDFlag() *cli.StringFlag {
	return &cli.StringFlag{Name: "node-id", Usage: "this node's `ID` (default: the hostname)", EnvVars: []string{"LDMIRROR_NODE_ID"}}
}

// setting is one flag value a resource file gives a command, and the key
// it comes from.
type setting struct {
	flag, value, key string
}

// settings collects a command's settings, leaving out empty values.
type settings []setting

func (s *settings) add(flag, value, key string) {
	if value != "" {
		*s = append(*s, setting{flag, value, key})
	}
}

// daemonSettings are the daemon's flags for data host s of f.
func daemonSettings(f *resource.File, s resource.Section) settings {
	h, peer := s.Host, s.Peer
	var out settings
	host := func(k string) string { return fmt.Sprintf("[[host]] %s %s", h.ID, k) }
	out.add("node-id", h.ID, host("id"))
	out.add("dir", f.VolumeDir(h), sourceKey(h.Dir, "volume.dir", host("dir")))
	out.add("mount", f.MountDir(h), sourceKey(h.Mount, "volume.mount", host("mount")))
	out.add("listen", h.Link, host("link"))
	out.add("peer", peer.Link, fmt.Sprintf("[[host]] %s link", peer.ID))
	out.add("cluster-bind", h.Cluster, host("cluster"))
	out.add("cluster-join", s.Witness.Cluster, "witness.cluster")
	out.add("cluster-raft-timeout", f.RaftTimeout, "raft_timeout")
	out = append(out, tlsSettings(f, h.TLSDir, host("tls_dir"))...)
	out.add("timeout", f.Timeout, "timeout")
	if f.Window > 0 {
		out.add("window", strconv.Itoa(f.Window), "window")
	}
	out.add("mode", f.Mode, "mode")
	out.add("journal-size", f.Journal.Size, "journal.size")
	out.add("journal-full", f.Journal.Full, "journal.full")
	if v := f.Volume.ActivityLog; v != nil {
		out.add("activity-log", strconv.FormatBool(*v), "volume.activity_log")
	}
	if r := f.Resync.Rate; r != "0" {
		out.add("resync-rate", r, "resync.rate")
	}
	out.add("resync-min-rate", f.Resync.MinRate, "resync.min_rate")
	if f.Resync.Checksum {
		out.add("resync-checksum", "true", "resync.checksum")
	}
	if p := f.Probe; p != nil {
		out.add("probe-url", f.ProbeURL(h), sourceKey(p.URL, "probe.url", host("ldap")))
		out.add("probe-bind-dn", p.BindDN, "probe.bind_dn")
		out.add("probe-password-file", p.PasswordFile, "probe.password_file")
		out.add("probe-read-dn", p.ReadDN, "probe.read_dn")
		out.add("probe-canary-dn", p.CanaryDN, "probe.canary_dn")
		out.add("probe-interval", p.Interval, "probe.interval")
		out.add("probe-timeout", p.Timeout, "probe.timeout")
		if p.Threshold > 0 {
			out.add("probe-threshold", strconv.Itoa(p.Threshold), "probe.threshold")
		}
	}
	out = append(out, logSettings(f)...)
	out.add("metrics-listen", f.MetricsListenOf(h), sourceKey(h.MetricsListen, "metrics_listen", host("metrics_listen")))
	return out
}

// witnessSettings are the witness's flags for the witness of f. It
// bootstraps the control plane the first time it starts (a member that is
// a voter already ignores it).
func witnessSettings(f *resource.File, s resource.Section) settings {
	w := s.Witness
	var out settings
	out.add("node-id", w.ID, "witness.id")
	out.add("data-dir", w.Dir, "witness.dir")
	out.add("bind", w.Cluster, "witness.cluster")
	out.add("bootstrap", "true", "witness")
	out.add("raft-timeout", f.RaftTimeout, "raft_timeout")
	out = append(out, tlsSettings(f, w.TLSDir, "witness.tls_dir")...)
	return append(out, logSettings(f)...)
}

func tlsSettings(f *resource.File, tlsDir, hostKey string) settings {
	t := f.TLSOf(tlsDir)
	key := func(k string) string {
		if tlsDir != "" {
			return hostKey
		}
		return "tls." + k
	}
	var out settings
	out.add("tls-dir", t.Dir, key("dir"))
	out.add("tls-cert", t.Cert, key("cert"))
	out.add("tls-key", t.Key, key("key"))
	out.add("tls-ca", t.CA, key("ca"))
	return out
}

func logSettings(f *resource.File) settings {
	var out settings
	out.add("log-level", f.LogLevel, "log_level")
	out.add("log-format", f.LogFormat, "log_format")
	return out
}

// volumeSettings point a data host's commands at its volume.
func volumeSettings(f *resource.File, s resource.Section) settings {
	var out settings
	out.add("dir", f.VolumeDir(s.Host), sourceKey(s.Host.Dir, "volume.dir", fmt.Sprintf("[[host]] %s dir", s.Host.ID)))
	return out
}

// onVolume is a data host's command that takes a resource's name or
// --dir: act runs with --dir set from the resource.
func onVolume(act cli.ActionFunc) cli.ActionFunc {
	return withResourceArg(resource.RoleData, volumeSettings, func(c *cli.Context, _ *loadedResource) error { return act(c) })
}

// initSettings are `init`'s flags for data host s of f.
func initSettings(f *resource.File, s resource.Section) settings {
	var out settings
	out.add("dir", f.VolumeDir(s.Host), "volume.dir")
	out.add("size", f.Volume.Size, "volume.size")
	out.add("volume-uuid", f.Volume.UUID, "volume.uuid")
	if f.Volume.BlockSize > 0 {
		out.add("block-size", strconv.Itoa(f.Volume.BlockSize), "volume.block_size")
	}
	if f.Volume.Sparse {
		out.add("sparse", "true", "volume.sparse")
	}
	return out
}

// retrierSettings are the retrier's flags: the first host's directory
// server is its primary, the second's its secondary, and each key of
// [retrier] sets the flag of its name (underscores for dashes).
func retrierSettings(f *resource.File, flags []cli.Flag) (settings, error) {
	var out settings
	out.add("primary", f.Hosts[0].LDAP, fmt.Sprintf("[[host]] %s ldap", f.Hosts[0].ID))
	out.add("secondary", f.Hosts[1].LDAP, fmt.Sprintf("[[host]] %s ldap", f.Hosts[1].ID))
	keys := make([]string, 0, len(f.Retrier))
	for k := range f.Retrier {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var errs []error
	for _, k := range keys {
		name := strings.ReplaceAll(k, "_", "-")
		fl := lookupFlag(flags, name)
		if fl == nil || name == "primary" || name == "secondary" {
			errs = append(errs, &resource.Error{File: f.Path, Line: f.Line("retrier." + k), Key: "retrier." + k,
				Msg: "not a retrier setting (its keys are `ldmirror retrier` flags with _ for -; primary and secondary are the hosts' ldap)"})
			continue
		}
		out.add(name, fmt.Sprint(f.Retrier[k]), "retrier."+k)
	}
	return out, errors.Join(errs...)
}

// sourceKey names where a per-host value came from: the host's own key
// if it set one, else the file-wide key.
func sourceKey(perHost, fileKey, hostKey string) string {
	if perHost != "" {
		return hostKey
	}
	return fileKey
}

// apply sets each setting's flag unless the command line set it.
func apply(c *cli.Context, s settings) error {
	for _, st := range s {
		if c.IsSet(st.flag) {
			continue
		}
		if err := c.Set(st.flag, st.value); err != nil {
			return fmt.Errorf("%s: %s = %q: %w", st.key, st.flag, st.value, err)
		}
	}
	return nil
}

// loadedResource is a resource file and this node's section of it.
type loadedResource struct {
	file    *resource.File
	section resource.Section
	// explicit are the flags the command line set (they override the
	// file), with their values.
	explicit map[string]string
}

// loadResource reads resource name from c's --config-dir and finds the
// section of c's node (--node-id, or the hostname).
func loadResource(c *cli.Context, name string) (*loadedResource, error) {
	f, err := resource.Load(c.String("config-dir"), name)
	if err != nil {
		return nil, err
	}
	id, err := flagNodeID(c)
	if err != nil {
		return nil, err
	}
	s, err := f.Section(id)
	if err != nil {
		return nil, err
	}
	return &loadedResource{file: f, section: s}, nil
}

// dataHost refuses a witness's section: what the command does needs a
// volume.
func (l *loadedResource) dataHost(verb string) error {
	if l.section.Role != resource.RoleData {
		return fmt.Errorf("%s: %s is the witness of %s, which has no volume: run it on a data host (%s or %s)",
			verb, l.section.Witness.ID, l.file.Name, l.file.Hosts[0].ID, l.file.Hosts[1].ID)
	}
	return nil
}

// controlSocket is the control socket of this node's process.
func (l *loadedResource) controlSocket() string {
	if l.section.Role == resource.RoleWitness {
		return filepath.Join(l.section.Witness.Dir, clusterControlFile)
	}
	return filepath.Join(l.file.VolumeDir(l.section.Host), volume.ControlFile)
}

// isResource reports whether name is a resource in c's --config-dir.
func isResource(c *cli.Context, name string) bool {
	if resource.ValidName(name) != nil {
		return false
	}
	_, err := os.Stat(resource.FilePath(c.String("config-dir"), name))
	return err == nil
}

// withResourceArg runs act after applying the resource named by c's
// optional first argument: set(file, section) are its flag values, and
// role the section it needs ("" any). Flags after the name are applied
// too.
func withResourceArg(role resource.Role, set func(*resource.File, resource.Section) settings, act func(*cli.Context, *loadedResource) error) cli.ActionFunc {
	return func(c *cli.Context) error {
		args, err := positional(c, 0, 1, "the resource's name")
		if err != nil {
			return err
		}
		if len(args) == 0 {
			return act(c, nil)
		}
		l, err := loadResource(c, args[0])
		if err != nil {
			return err
		}
		switch {
		case role == resource.RoleData:
			if err := l.dataHost(c.Command.Name); err != nil {
				return err
			}
		case role == resource.RoleWitness && l.section.Role != resource.RoleWitness:
			return fmt.Errorf("%s: %s is a data host of %s: run ldmirror daemon %s (or up %s) there", c.Command.Name, l.section.Host.ID, l.file.Name, l.file.Name, l.file.Name)
		}
		l.explicit = setFlags(c)
		if err := apply(c, set(l.file, l.section)); err != nil {
			return err
		}
		return act(c, l)
	}
}

// positional returns c's positional arguments (between least and most of
// them, what says what they are) and applies the flags that follow them
// ("promote b --force --reason X"): urfave/cli stops parsing flags at the
// first argument.
func positional(c *cli.Context, least, most int, what string) ([]string, error) {
	var args []string
	rest := c.Args().Slice()
	for len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		args, rest = append(args, rest[0]), rest[1:]
	}
	if len(args) < least || len(args) > most {
		n := "one argument"
		switch {
		case least == 0 && most == 1:
			n = "at most one argument"
		case most > 1:
			n = fmt.Sprintf("%d to %d arguments", least, most)
		}
		return nil, fmt.Errorf("%s takes %s, %s; got %d", c.Command.Name, n, what, len(args))
	}
	for len(rest) > 0 {
		tok := rest[0]
		rest = rest[1:]
		name, value, hasValue := strings.Cut(strings.TrimLeft(tok, "-"), "=")
		if !strings.HasPrefix(tok, "-") || name == "" {
			return nil, fmt.Errorf("%s takes %s; %q is one too many (flags go before or after them)", c.Command.Name, what, tok)
		}
		f := lookupFlag(c.Command.Flags, name)
		if f == nil {
			return nil, fmt.Errorf("%s: unknown flag %s", c.Command.Name, tok)
		}
		if _, isBool := f.(*cli.BoolFlag); isBool && !hasValue {
			value, hasValue = "true", true
		}
		if !hasValue {
			if len(rest) == 0 {
				return nil, fmt.Errorf("%s: flag %s needs a value", c.Command.Name, tok)
			}
			value, rest = rest[0], rest[1:]
		}
		if err := c.Set(name, value); err != nil {
			return nil, fmt.Errorf("%s: %s: %w", c.Command.Name, tok, err)
		}
	}
	return args, nil
}

// commandContext is a context of cmd's flags, as if its command line had
// set values: what it would run with, for `config check` and reloads.
func commandContext(app *cli.App, cmd *cli.Command, values map[string]string) (*cli.Context, error) {
	set := flag.NewFlagSet(cmd.Name, flag.ContinueOnError)
	for _, f := range cmd.Flags {
		if err := f.Apply(set); err != nil {
			return nil, err
		}
	}
	c := cli.NewContext(app, set, nil)
	c.Command = cmd
	for name, v := range values {
		if err := c.Set(name, v); err != nil {
			return nil, fmt.Errorf("--%s %q: %w", name, v, err)
		}
	}
	return c, nil
}

// setFlags are the flags c's command line set, and their values.
func setFlags(c *cli.Context) map[string]string {
	out := map[string]string{}
	for _, f := range c.Command.Flags {
		name := f.Names()[0]
		if c.IsSet(name) {
			out[name] = flagString(c, name)
		}
	}
	return out
}

// flagString is flag name's value in c as the command line writes it.
func flagString(c *cli.Context, name string) string {
	v := c.Value(name)
	if v == nil {
		return ""
	}
	return fmt.Sprint(v)
}
