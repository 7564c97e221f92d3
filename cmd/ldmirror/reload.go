package main

import (
	"fmt"
	"reflect"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/ldmirror/ldmirror/ctl"
	"github.com/ldmirror/ldmirror/node"
	"github.com/ldmirror/ldmirror/pki"
	"github.com/ldmirror/ldmirror/resource"
)

// reloader is the one reload path of the daemon and the witness (SIGHUP,
// `ldmirror adjust`): it re-reads the certificate, and the resource file
// if the process runs from one. Of what changed in the file it applies the
// log level and, on a data host, the resync rates and the probe settings;
// it logs the rest as not applied (a restart applies it). Flags given on
// the command line keep overriding the file.
type reloader struct {
	log   logs
	creds *pki.Source // nil: no certificate
	node  *node.Node  // nil on the witness

	// With a resource file: the command's definition and the flags its
	// command line set, to rebuild what it runs with from a new file.
	app      *cli.App
	cmd      *cli.Command
	explicit map[string]string
	res      *loadedResource
	dir, id  string
	settings func(*resource.File, resource.Section) settings
	current  map[string]string // flag values in force
}

// newReloader is the reloader of the process c runs, from resource l
// (nil: flags only); explicit are the flags its command line set.
func newReloader(c *cli.Context, l *loadedResource, explicit map[string]string, lg logs, creds *pki.Source,
	n *node.Node, set func(*resource.File, resource.Section) settings) *reloader {
	r := &reloader{log: lg, creds: creds, node: n, app: c.App, cmd: c.Command, explicit: explicit, res: l, settings: set}
	if l != nil {
		r.dir, r.id = c.String("config-dir"), c.String("node-id")
		r.current = map[string]string{}
		for _, f := range c.Command.Flags {
			r.current[f.Names()[0]] = flagString(c, f.Names()[0])
		}
	}
	return r
}

// reloadable are the flags a reload applies; the others take a restart.
var reloadable = map[string]string{
	"log-level": "log", "resync-rate": "rates", "resync-min-rate": "rates",
	"probe-url": "probe", "probe-bind-dn": "probe", "probe-password-file": "probe", "probe-read-dn": "probe",
	"probe-canary-dn": "probe", "probe-interval": "probe", "probe-timeout": "probe", "probe-threshold": "probe",
}

// reload re-reads what it can and says what it did; the log says it too.
func (r *reloader) reload() ctl.Reload {
	var rep ctl.Reload
	if r.creds != nil {
		if err := r.creds.Reload(); err != nil {
			r.log.Error("TLS certificate not reloaded: keeping the current one", "files", r.creds.Files(), "err", err)
			rep.Errors = append(rep.Errors, "certificate: "+err.Error())
		} else {
			cert := r.creds.Certificate()
			r.log.Info("TLS certificate reloaded: new sessions use it", "serial", fmt.Sprintf("%x", cert.SerialNumber), "not_after", cert.NotAfter.UTC())
			rep.Applied = append(rep.Applied, fmt.Sprintf("certificate (serial %x)", cert.SerialNumber))
		}
	}
	if r.res == nil {
		r.log.Info("reloaded; no resource file: the other settings are the command line's")
		return rep
	}
	next, nc, f, err := r.next()
	if err != nil {
		r.log.Error("resource file not reloaded: keeping the settings in force", "err", err)
		rep.Errors = append(rep.Errors, err.Error())
		return rep
	}
	groups := map[string]bool{}
	for _, fl := range r.cmd.Flags {
		name := fl.Names()[0]
		old, cur := r.current[name], next[name]
		if old == cur {
			continue
		}
		change := fmt.Sprintf("%s %s -> %s", name, quoteEmpty(old), quoteEmpty(cur))
		group, ok := reloadable[name]
		if !ok || r.node == nil && group != "log" {
			rep.NotApplied = append(rep.NotApplied, change)
			continue
		}
		groups[group] = true
		rep.Applied = append(rep.Applied, change)
		r.current[name] = cur
	}
	if groups["log"] {
		if err := r.log.level.UnmarshalText([]byte(next["log-level"])); err != nil {
			rep.Errors = append(rep.Errors, "log-level: "+err.Error())
		}
	}
	if groups["rates"] {
		rate, minRate, err := resyncRates(nc)
		if err != nil {
			rep.Errors = append(rep.Errors, err.Error())
		} else {
			r.node.SetResyncRates(rate, minRate)
		}
	}
	if groups["probe"] {
		pcfg, err := probeConfig(nc)
		if err != nil {
			rep.Errors = append(rep.Errors, err.Error())
		} else {
			r.node.SetProbe(pcfg)
		}
	}
	if r.node != nil && !reflect.DeepEqual(f.Agent, r.res.file.Agent) {
		rep.NotApplied = append(rep.NotApplied, "[agent]")
	}
	r.log.Info("reloaded", "applied", strings.Join(rep.Applied, "; "))
	if len(rep.NotApplied) > 0 {
		r.log.Warn("changed but not applied: restart the daemon to apply", "not_applied", strings.Join(rep.NotApplied, "; "))
	}
	return rep
}

// next reads the resource file again and returns the flag values the
// command would now run with, as values and as a context.
func (r *reloader) next() (map[string]string, *cli.Context, *resource.File, error) {
	f, err := resource.Load(r.dir, r.res.file.Name)
	if err != nil {
		return nil, nil, nil, err
	}
	s, err := f.Section(r.res.section.ID())
	if err != nil {
		return nil, nil, nil, err
	}
	values := map[string]string{}
	for _, st := range r.settings(f, s) {
		values[st.flag] = st.value
	}
	for k, v := range r.explicit {
		values[k] = v
	}
	nc, err := commandContext(r.app, r.cmd, values)
	if err != nil {
		return nil, nil, nil, err
	}
	next := map[string]string{}
	for _, fl := range r.cmd.Flags {
		next[fl.Names()[0]] = flagString(nc, fl.Names()[0])
	}
	return next, nc, f, nil
}

func quoteEmpty(s string) string {
	if s == "" {
		return `""`
	}
	return s
}
