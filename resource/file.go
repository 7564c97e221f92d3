package resource

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/pelletier/go-toml/v2"

	"github.com/ldmirror/ldmirror/internal/fileperm"
	"github.com/ldmirror/ldmirror/ldapagent/agent"
)

// DefaultDir is where resource files live: DefaultDir/<name>.toml.
const DefaultDir = "/etc/ldmirror"

// Ext ends every resource file's name.
const Ext = ".toml"

// Errors callers act on.
var (
	// ErrInvalid is wrapped by every *Error: the file is wrong and says
	// where.
	ErrInvalid = errors.New("invalid resource file")
	// ErrNotFound reports a resource with no file.
	ErrNotFound = errors.New("no such resource")
	// ErrNoSection reports a node ID that no [[host]] or [witness] of the
	// file has.
	ErrNoSection = errors.New("no section for this node")
)

// File is one resource file as decoded. Sizes, durations and modes are the
// strings the file holds, checked by Load; keys left out are empty (the
// command's default applies).
type File struct {
	Mode          string `toml:"mode"`
	Timeout       string `toml:"timeout"`
	Window        int    `toml:"window"`
	RaftTimeout   string `toml:"raft_timeout"`
	LogLevel      string `toml:"log_level"`
	LogFormat     string `toml:"log_format"`
	MetricsListen string `toml:"metrics_listen"`

	Volume  Volume         `toml:"volume"`
	TLS     TLS            `toml:"tls"`
	Journal Journal        `toml:"journal"`
	Resync  Resync         `toml:"resync"`
	Probe   *Probe         `toml:"probe"`
	Agent   *agent.File    `toml:"agent"`
	Retrier map[string]any `toml:"retrier"`
	Hosts   []Host         `toml:"host"`
	Witness *Witness       `toml:"witness"`

	// Name is the resource's name, Path its file.
	Name string `toml:"-"`
	Path string `toml:"-"`

	lines lineIndex
}

// Volume is the mirrored volume: the same on both data hosts.
type Volume struct {
	UUID        string `toml:"uuid"`
	Size        string `toml:"size"`
	BlockSize   int    `toml:"block_size"`
	Sparse      bool   `toml:"sparse"`
	Dir         string `toml:"dir"`
	Mount       string `toml:"mount"`
	ActivityLog *bool  `toml:"activity_log"`
}

// TLS names a node's certificate: a directory as `ldmirror pki issue`
// writes it, or the three files.
type TLS struct {
	Dir  string `toml:"dir"`
	Cert string `toml:"cert"`
	Key  string `toml:"key"`
	CA   string `toml:"ca"`
}

// Journal is async mode's journal.
type Journal struct {
	Size string `toml:"size"`
	Full string `toml:"full"`
}

// Resync paces resyncs; Rate and MinRate may change while the daemon runs
// (SIGHUP).
type Resync struct {
	Rate     string `toml:"rate"`
	MinRate  string `toml:"min_rate"`
	Checksum bool   `toml:"checksum"`
}

// Probe watches each data host's own directory server: URL, or the
// host's ldap URL.
type Probe struct {
	URL          string `toml:"url"`
	BindDN       string `toml:"bind_dn"`
	PasswordFile string `toml:"password_file"`
	ReadDN       string `toml:"read_dn"`
	CanaryDN     string `toml:"canary_dn"`
	Interval     string `toml:"interval"`
	Timeout      string `toml:"timeout"`
	Threshold    int    `toml:"threshold"`
}

// Host is one data host's section, [[host]].
type Host struct {
	ID string `toml:"id"`
	// Link is the data link's address: the host listens there while
	// secondary, and its peer dials it while primary.
	Link string `toml:"link"`
	// Cluster is its raft port's address.
	Cluster string `toml:"cluster"`
	// LDAP is the URL of its directory server: what the agent and the
	// probe watch, and what the retrier relays to.
	LDAP string `toml:"ldap"`
	// Per-host values of volume.dir, volume.mount, tls.dir and
	// metrics_listen.
	Dir           string `toml:"dir"`
	Mount         string `toml:"mount"`
	TLSDir        string `toml:"tls_dir"`
	MetricsListen string `toml:"metrics_listen"`
}

// Witness is the witness's section, [witness].
type Witness struct {
	ID      string `toml:"id"`
	Cluster string `toml:"cluster"`
	// Dir holds its raft data and control socket.
	Dir    string `toml:"dir"`
	TLSDir string `toml:"tls_dir"`
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$`)

// ValidName checks a resource name: 1 to 64 letters, digits, '.', '_' or
// '-', not starting with '.' or '-'.
func ValidName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("resource name %q: use 1 to 64 of A-Z a-z 0-9 . _ -, not starting with . or -", name)
	}
	return nil
}

// FilePath is the file of resource name in dir.
func FilePath(dir, name string) string { return filepath.Join(dir, name+Ext) }

// Names lists the resources in dir, sorted.
func Names(dir string) ([]string, error) {
	matches, err := filepath.Glob(filepath.Join(dir, "*"+Ext))
	if err != nil {
		return nil, err
	}
	var names []string
	for _, m := range matches {
		n := strings.TrimSuffix(filepath.Base(m), Ext)
		if ValidName(n) == nil {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	return names, nil
}

// Load reads and checks resource name in dir. A file with an [agent]
// table names commands its daemon runs as root and may hold a password:
// it is refused unless only its owner may read it.
func Load(dir, name string) (*File, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	path := FilePath(dir, name)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w %q: %s does not exist (write it: docs/operations.md, \"Resource files\")", ErrNotFound, name, path)
	}
	if err != nil {
		return nil, err
	}
	f, err := Parse(path, b)
	if err != nil {
		return nil, err
	}
	if f.Agent != nil {
		if err := fileperm.CheckPrivate(path); err != nil {
			return nil, fmt.Errorf("%s: [agent] names root commands and may hold a password: %w", path, err)
		}
	}
	return f, nil
}

// Parse decodes and checks the resource file at path, whose content is b.
// The resource is named after the file.
func Parse(path string, b []byte) (*File, error) {
	f := &File{Name: strings.TrimSuffix(filepath.Base(path), Ext), Path: path}
	dec := toml.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(f); err != nil {
		return nil, f.decodeError(err)
	}
	lines, err := indexLines(b) // the decoder accepted its syntax
	if err != nil {
		return nil, &Error{File: path, Msg: err.Error()}
	}
	f.lines = lines
	if err := f.check(); err != nil {
		return nil, err
	}
	return f, nil
}

// Error is one problem in a resource file: the file, its line (0 if not
// known), the key, and what to do. It wraps ErrInvalid, and Kind if set.
type Error struct {
	File string
	Line int
	Key  string
	Msg  string
	Kind error
}

func (e *Error) Error() string {
	where := e.File
	if e.Line > 0 {
		where = fmt.Sprintf("%s:%d", e.File, e.Line)
	}
	if e.Key == "" {
		return where + ": " + e.Msg
	}
	return where + ": " + e.Key + ": " + e.Msg
}

// Unwrap returns ErrInvalid and Kind.
func (e *Error) Unwrap() []error {
	if e.Kind != nil {
		return []error{ErrInvalid, e.Kind}
	}
	return []error{ErrInvalid}
}

// errorAt is an *Error about key, at its line.
func (f *File) errorAt(key, format string, a ...any) *Error {
	return &Error{File: f.Path, Line: f.Line(key), Key: f.displayKey(key), Msg: fmt.Sprintf(format, a...)}
}

// Line is the line of key ("volume.size", "host[1].link") in the file, or
// of the nearest enclosing table or array element it is known at; 0 if
// none.
func (f *File) Line(key string) int { return f.lines.line(key) }

// Role is what a node is in a resource.
type Role string

// Roles.
const (
	RoleData    Role = "data host"
	RoleWitness Role = "witness"
)

// Section is one node's part of the resource.
type Section struct {
	Role    Role
	Host    Host // RoleData: this host
	Peer    Host // RoleData: the other data host
	Witness Witness
}

// ID is the section's node ID.
func (s Section) ID() string {
	if s.Role == RoleWitness {
		return s.Witness.ID
	}
	return s.Host.ID
}

// IDs are the node IDs of the file: the data hosts, then the witness.
func (f *File) IDs() []string {
	var ids []string
	for _, h := range f.Hosts {
		ids = append(ids, h.ID)
	}
	if f.Witness != nil {
		ids = append(ids, f.Witness.ID)
	}
	return ids
}

// Section finds node id's section; the error wraps ErrNoSection and says
// how to fix it.
func (f *File) Section(id string) (Section, error) {
	s := Section{Witness: *f.Witness}
	for i, h := range f.Hosts {
		if h.ID == id {
			s.Role, s.Host, s.Peer = RoleData, h, f.Hosts[1-i]
			return s, nil
		}
	}
	if f.Witness.ID == id {
		s.Role = RoleWitness
		return s, nil
	}
	ids := f.IDs()
	e := f.errorAt("host", "no [[host]] or [witness] has id = %q, this node's ID: add its section, or run with --node-id %s or %s",
		id, strings.Join(ids[:len(ids)-1], ", "), ids[len(ids)-1])
	e.Kind = ErrNoSection
	return s, e
}

// VolumeDir is host h's volume directory.
func (f *File) VolumeDir(h Host) string { return or(h.Dir, f.Volume.Dir) }

// MountDir is host h's export directory ("": the default, <dir>/export).
func (f *File) MountDir(h Host) string { return or(h.Mount, f.Volume.Mount) }

// TLSOf is the certificate settings of a node whose section names tlsDir
// (empty: the file's [tls]).
func (f *File) TLSOf(tlsDir string) TLS {
	if tlsDir != "" {
		return TLS{Dir: tlsDir}
	}
	return f.TLS
}

// MetricsListenOf is host h's metrics address ("": no metrics).
func (f *File) MetricsListenOf(h Host) string { return or(h.MetricsListen, f.MetricsListen) }

// ProbeURL is the directory server host h's daemon probes ("": none).
func (f *File) ProbeURL(h Host) string {
	if f.Probe == nil {
		return ""
	}
	return or(f.Probe.URL, h.LDAP)
}

// AgentConfig is the LDAP agent's configuration on data host s (nil
// without an [agent] table): it probes the peer's ldap URL and its own.
func (f *File) AgentConfig(s Section) (*agent.Config, error) {
	if f.Agent == nil {
		return nil, nil
	}
	a := *f.Agent
	a.PeerURL, a.LocalURL = s.Peer.LDAP, s.Host.LDAP
	c, err := a.Config(filepath.Dir(f.Path))
	if err != nil {
		return nil, f.agentError(err)
	}
	return &c, nil
}

// agentError places an error of the agent's configuration at its key.
func (f *File) agentError(err error) error {
	var fe *agent.FieldError
	if !errors.As(err, &fe) {
		return f.errorAt("agent", "%v", err)
	}
	switch fe.Field {
	case "peer_url", "local_url":
		return f.errorAt("host", "ldap: %s (each [[host]] needs ldap = \"ldap://HOST:PORT\" with [agent])", fe.Msg)
	}
	return f.errorAt("agent."+fe.Field, "%s", fe.Msg)
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
