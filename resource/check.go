package resource

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/ldmirror/ldmirror/internal/bytesize"
	"github.com/ldmirror/ldmirror/mirror"
	"github.com/ldmirror/ldmirror/pki"
)

// checker collects the problems of one file.
type checker struct {
	f    *File
	errs []error
}

func (c *checker) fail(key, format string, a ...any) {
	c.errs = append(c.errs, c.f.errorAt(key, format, a...))
}

// check checks every value of f and the hosts as a whole.
func (f *File) check() error {
	c := &checker{f: f}
	c.parsed("mode", f.Mode, func(s string) error { _, err := mirror.ParseMode(s); return err })
	c.duration("timeout", f.Timeout, 0)
	c.duration("raft_timeout", f.RaftTimeout, 50*time.Millisecond)
	if f.Window < 0 {
		c.fail("window", "%d: give the writes in flight to the peer at most, e.g. 64", f.Window)
	}
	c.parsed("log_level", f.LogLevel, func(s string) error {
		var l slog.Level
		return l.UnmarshalText([]byte(s))
	})
	c.oneOf("log_format", f.LogFormat, "text", "json")
	c.address("metrics_listen", f.MetricsListen)

	v := f.Volume
	c.path("volume.dir", v.Dir, false)
	c.path("volume.mount", v.Mount, false)
	if v.Size == "" {
		c.fail("volume", `size is required: the volume's size, the same on both hosts, e.g. size = "10GiB"`)
	}
	c.size("volume.size", v.Size, false)
	if v.UUID != "" {
		if _, err := uuid.Parse(v.UUID); err != nil {
			c.fail("volume.uuid", "%q is not a UUID: %v (make one: cat /proc/sys/kernel/random/uuid)", v.UUID, err)
		}
	}
	if v.BlockSize < 0 {
		c.fail("volume.block_size", "%d: give the dirty-tracking granularity in bytes, e.g. 4096", v.BlockSize)
	}

	c.tls("tls", f.TLS)
	c.size("journal.size", f.Journal.Size, false)
	c.parsed("journal.full", f.Journal.Full, func(s string) error { _, err := mirror.ParseFullPolicy(s); return err })
	c.size("resync.rate", f.Resync.Rate, true)
	c.size("resync.min_rate", f.Resync.MinRate, true)
	if p := f.Probe; p != nil {
		c.ldapURL("probe.url", p.URL)
		c.path("probe.password_file", p.PasswordFile, false)
		c.duration("probe.interval", p.Interval, 0)
		c.duration("probe.timeout", p.Timeout, 0)
		if p.Threshold < 0 {
			c.fail("probe.threshold", "%d: give the failed probes in a row that count as down, e.g. 3", p.Threshold)
		}
	}
	c.hosts()
	if len(c.errs) == 0 && f.Agent != nil {
		if f.Agent.PeerURL != "" || f.Agent.LocalURL != "" {
			key := "agent.peer_url"
			if f.Agent.PeerURL == "" {
				key = "agent.local_url"
			}
			c.fail(key, "not set here in a resource file: each [[host]]'s ldap is its URL (the agent probes its peer's and its own)")
		}
		for _, h := range f.Hosts {
			s, _ := f.Section(h.ID)
			if _, err := f.AgentConfig(s); err != nil {
				c.errs = append(c.errs, err)
				break
			}
		}
	}
	return errors.Join(c.errs...)
}

// hosts checks the [[host]] sections and [witness]: two data hosts and a
// witness, each with its addresses, and no node ID twice.
func (c *checker) hosts() {
	f := c.f
	switch n := len(f.Hosts); {
	case n < 2:
		c.fail("host", "a pair needs two [[host]] sections, found %d: add one for each data host (id, link, cluster)", n)
	case n > 2:
		c.fail(fmt.Sprintf("host[%d]", n-1), "a pair has two data hosts, found %d [[host]] sections: remove the extra ones", n)
	}
	seen := map[string]string{} // node ID → the key that first had it
	links := map[string]string{}
	unique := func(key, id string) {
		if first, ok := seen[id]; ok {
			c.fail(key, "%q is also the id of %s (line %d): node IDs must differ; give each node its own (its hostname by default)",
				id, f.displayKey(strings.TrimSuffix(first, ".id")), f.Line(first))
			return
		}
		seen[id] = key
	}
	for i, h := range f.Hosts {
		k := fmt.Sprintf("host[%d]", i)
		c.nodeID(k+".id", h.ID)
		if h.ID != "" {
			unique(k+".id", h.ID)
		}
		for _, a := range []struct{ key, addr, what string }{
			{".link", h.Link, "the data link's host:port, e.g. link = \"10.0.0.1:7789\""},
			{".cluster", h.Cluster, "the raft port's host:port, e.g. cluster = \"10.0.0.1:7400\""},
		} {
			if a.addr == "" {
				c.fail(k, "%s is required: %s", strings.TrimPrefix(a.key, "."), a.what)
				continue
			}
			c.address(k+a.key, a.addr)
			if first, ok := links[a.addr]; ok {
				c.fail(k+a.key, "%s is also %s (line %d): each port is one host's", a.addr, f.displayKey(first), f.Line(first))
			}
			links[a.addr] = k + a.key
		}
		c.ldapURL(k+".ldap", h.LDAP)
		c.path(k+".dir", h.Dir, false)
		c.path(k+".mount", h.Mount, false)
		c.path(k+".tls_dir", h.TLSDir, false)
		c.address(k+".metrics_listen", h.MetricsListen)
		if f.VolumeDir(h) == "" {
			c.fail(k, "no volume directory: set dir in [volume] (or in each [[host]])")
		}
		if f.TLSOf(h.TLSDir) == (TLS{}) {
			c.fail(k, "no certificate: set dir in [tls] (or cert, key and ca), or tls_dir here")
		}
		if f.Probe != nil && f.ProbeURL(h) == "" {
			c.fail(k, "[probe] without url needs this host's ldap = \"ldap://HOST:PORT\"")
		}
	}
	w := f.Witness
	if w == nil {
		c.fail("", "no [witness] section: the control plane needs a third voter (id, cluster, dir)")
		f.Witness = &Witness{}
		return
	}
	c.nodeID("witness.id", w.ID)
	if w.ID != "" {
		unique("witness.id", w.ID)
	}
	if w.Cluster == "" {
		c.fail("witness", `cluster is required: the witness's raft port, e.g. cluster = "10.0.0.3:7400"`)
	}
	c.address("witness.cluster", w.Cluster)
	if w.Dir == "" {
		c.fail("witness", `dir is required: where the witness keeps its raft data, e.g. dir = "/var/lib/ldmirror/r0-witness"`)
	}
	c.path("witness.dir", w.Dir, false)
	c.path("witness.tls_dir", w.TLSDir, false)
	if f.TLSOf(w.TLSDir) == (TLS{}) {
		c.fail("witness", "no certificate: set dir in [tls] (or cert, key and ca), or tls_dir here")
	}
}

// displayKey names key for an operator: a host by its ID.
func (f *File) displayKey(key string) string {
	for i, h := range f.Hosts {
		rest, ok := strings.CutPrefix(key, fmt.Sprintf("host[%d]", i))
		if !ok {
			continue
		}
		rest = strings.Replace(rest, ".", " ", 1)
		same := 0
		for _, o := range f.Hosts {
			if o.ID == h.ID {
				same++
			}
		}
		if h.ID == "" || same > 1 {
			return fmt.Sprintf("[[host]] #%d%s", i+1, rest)
		}
		return fmt.Sprintf("[[host]] %q%s", h.ID, rest)
	}
	return key
}

func (c *checker) nodeID(key, id string) {
	if id == "" {
		c.fail(strings.TrimSuffix(key, ".id"), "id is required: the node's ID, e.g. id = \"a\" (its hostname by default)")
		return
	}
	if err := pki.ValidNodeID(id); err != nil {
		c.fail(key, "%v", err)
	}
}

func (c *checker) parsed(key, s string, parse func(string) error) {
	if s == "" {
		return
	}
	if err := parse(s); err != nil {
		c.fail(key, "%v", err)
	}
}

func (c *checker) oneOf(key, s string, allowed ...string) {
	if s == "" {
		return
	}
	for _, a := range allowed {
		if s == a {
			return
		}
	}
	c.fail(key, "%q: want %s", s, strings.Join(allowed, " or "))
}

func (c *checker) duration(key, s string, least time.Duration) {
	if s == "" {
		return
	}
	d, err := time.ParseDuration(s)
	switch {
	case err != nil:
		c.fail(key, "%q is not a duration: write it like \"500ms\", \"5s\" or \"2m\"", s)
	case d <= 0 || d < least:
		c.fail(key, "%q: give at least %v", s, max(least, time.Millisecond))
	}
}

// size checks a byte count; zeroOK accepts "0" (no limit, never).
func (c *checker) size(key, s string, zeroOK bool) {
	if s == "" || zeroOK && strings.TrimSpace(s) == "0" {
		return
	}
	if _, err := bytesize.Parse(s); err != nil {
		c.fail(key, "%v", err)
	}
}

func (c *checker) address(key, s string) {
	if s == "" {
		return
	}
	_, port, err := net.SplitHostPort(s)
	if err == nil {
		var n uint64
		n, err = strconv.ParseUint(port, 10, 16)
		if err == nil && n == 0 {
			err = errors.New("port 0")
		}
	}
	if err != nil {
		c.fail(key, "%q is not host:port (e.g. \"10.0.0.1:7789\"): %v", s, err)
	}
}

func (c *checker) ldapURL(key, s string) {
	if s == "" {
		return
	}
	if !strings.HasPrefix(s, "ldap://") && !strings.HasPrefix(s, "ldaps://") && !strings.HasPrefix(s, "ldapi://") {
		c.fail(key, "%q: want an ldap://, ldaps:// or ldapi:// URL", s)
	}
}

// path checks that a path is absolute; required says it must be set.
func (c *checker) path(key, s string, required bool) {
	switch {
	case s == "" && required:
		parent, name, _ := strings.Cut(key, ".")
		c.fail(parent, "%s is required", name)
	case s != "" && !filepath.IsAbs(s):
		c.fail(key, "%q: give an absolute path", s)
	}
}

func (c *checker) tls(key string, t TLS) {
	c.path(key+".dir", t.Dir, false)
	c.path(key+".cert", t.Cert, false)
	c.path(key+".key", t.Key, false)
	c.path(key+".ca", t.CA, false)
	files := t.Cert != "" || t.Key != "" || t.CA != ""
	switch {
	case t.Dir != "" && files:
		c.fail(key, "set dir, or cert, key and ca: not both")
	case files && (t.Cert == "" || t.Key == "" || t.CA == ""):
		c.fail(key, "cert, key and ca go together: set all three (or dir)")
	}
}
