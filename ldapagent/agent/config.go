package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/ldmirror/ldmirror/internal/fileperm"
	"github.com/ldmirror/ldmirror/ldapagent/probe"
)

// Failback policies.
const (
	// FailbackManual leaves the service where a failover put it until an
	// operator runs `ldmirror swap`.
	FailbackManual = "manual"
	// FailbackAuto moves the service back to Config.Preferred once that
	// host has been uptodate and ready for Config.FailbackAfter.
	FailbackAuto = "auto"
)

// Defaults for zero Config fields.
const (
	DefaultInterval        = probe.DefaultInterval
	DefaultTimeout         = probe.DefaultTimeout
	DefaultThreshold       = probe.DefaultThreshold
	DefaultMinSwapInterval = time.Minute
	DefaultFailbackAfter   = 5 * time.Minute
	DefaultReadyInterval   = 10 * time.Second
	DefaultHookTimeout     = 30 * time.Second
	DefaultControlTimeout  = 10 * time.Second
	DefaultSwapTimeout     = time.Minute
)

// Config is one host's agent configuration. LoadConfig reads it from a
// JSON file whose keys are the names in the field comments; durations are
// strings such as "3s" or "2m". Zero fields take the defaults above.
type Config struct {
	// PeerURL (peer_url) is the LDAP URL of the other host's directory
	// server, probed while this host is secondary: its failure is what
	// triggers a failover to this host. Required.
	PeerURL string
	// LocalURL (local_url) is this host's own directory server, probed
	// while this host is primary; its health is the readiness this host
	// reports. Empty: not probed, and a serving primary reports ready.
	LocalURL string
	// BindDN (bind_dn), Password (password) or PasswordFile
	// (password_file), ReadDN (read_dn), CanaryDN (canary_dn) and
	// CanaryAttr (canary_attr) are passed to both probes (probe.Config).
	// PasswordFile is read when the agent starts; a trailing newline is
	// dropped. LoadConfig resolves a relative path against the config
	// file's directory.
	BindDN, Password, PasswordFile string
	ReadDN, CanaryDN, CanaryAttr   string
	// Interval (interval) between probes, Timeout (timeout) of one probe,
	// Threshold (threshold) of consecutive failed probes after which a
	// directory server counts as down.
	Interval  time.Duration
	Timeout   time.Duration
	Threshold int
	// MinSwapInterval (min_swap_interval) is the anti-flap rule: the agent
	// starts no failover or automatic failback until this long after the
	// last role change it saw, and after its own start.
	MinSwapInterval time.Duration
	// Failback (failback) is FailbackManual (default) or FailbackAuto.
	Failback string
	// FailbackAfter (failback_after): with automatic failback, how long
	// Preferred must have been uptodate and ready before the service moves
	// back to it.
	FailbackAfter time.Duration
	// Preferred (preferred) is the node ID automatic failback returns the
	// service to. Required with FailbackAuto.
	Preferred string
	// ReadyCheck (ready_check), if set, is this host's own readiness: run
	// before this host asks to become primary (a failure stops the
	// failover) and every ReadyInterval (ready_interval) while secondary,
	// its result reported to the control plane.
	ReadyCheck    *Hook
	ReadyInterval time.Duration
	// Promote (promote) runs in order when this host becomes primary, after
	// the volume's export is mounted; Demote (demote) when it loses the
	// role (and once at start if it is secondary). A failing hook stops
	// its sequence. Hooks must be idempotent: they may run again on a host
	// where they already ran (at start, on retry).
	Promote, Demote []Hook
	// ControlTimeout (control_timeout) bounds each request to the control
	// plane (failover, readiness report); without quorum it fails then.
	ControlTimeout time.Duration
	// SwapTimeout (swap_timeout) bounds Volume.Swap (drain, flush, role
	// transfer) and the wait for the volume when service is restored
	// after a failed swap.
	SwapTimeout time.Duration
}

// Hook is one command of a sequence.
type Hook struct {
	// Name (name) identifies the hook in logs and status: letters, digits,
	// '.', '_' and '-'; unique within its sequence.
	Name string
	// Command (command) runs with /bin/sh -c, in its own process group,
	// with the LDMIRROR_* variables (see docs/agent.md) added to the
	// daemon's environment. Exit status 0 is success.
	Command string
	// Timeout (timeout) bounds the command (default DefaultHookTimeout);
	// at the deadline its whole process group is killed and the hook has
	// failed.
	Timeout time.Duration
}

// ErrConfig is wrapped by every configuration error.
var ErrConfig = errors.New("invalid agent config")

var hookName = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// FieldError is a configuration error about one key (its name in the
// file, e.g. "promote[1].command"). It wraps ErrConfig.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return fmt.Sprintf("%v: %s: %s", ErrConfig, e.Field, e.Msg) }

// Unwrap returns ErrConfig.
func (e *FieldError) Unwrap() error { return ErrConfig }

func configError(field, format string, a ...any) error {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, a...)}
}

// withDefaults checks c, fills in defaults and reads the password file.
// Errors name the JSON key and say what to fix.
func (c Config) withDefaults() (Config, error) {
	if c.PeerURL == "" {
		return c, configError("peer_url", `required: the LDAP URL of the other host's directory server, e.g. "ldap://10.0.0.2:389"`)
	}
	if err := checkURL("peer_url", c.PeerURL); err != nil {
		return c, err
	}
	if c.LocalURL != "" {
		if err := checkURL("local_url", c.LocalURL); err != nil {
			return c, err
		}
	}
	if c.PasswordFile != "" {
		if c.Password != "" {
			return c, configError("password_file", "set either password or password_file, not both")
		}
		b, err := os.ReadFile(c.PasswordFile)
		if err != nil {
			return c, configError("password_file", "%v", err)
		}
		c.Password = strings.TrimRight(string(b), "\r\n")
	}
	if c.Password != "" && c.BindDN == "" {
		return c, configError("bind_dn", "a password is set but no bind_dn to bind as")
	}
	type dur struct {
		name string
		v    *time.Duration
		def  time.Duration
	}
	for _, d := range []dur{
		{"interval", &c.Interval, DefaultInterval},
		{"timeout", &c.Timeout, DefaultTimeout},
		{"min_swap_interval", &c.MinSwapInterval, DefaultMinSwapInterval},
		{"failback_after", &c.FailbackAfter, DefaultFailbackAfter},
		{"ready_interval", &c.ReadyInterval, DefaultReadyInterval},
		{"control_timeout", &c.ControlTimeout, DefaultControlTimeout},
		{"swap_timeout", &c.SwapTimeout, DefaultSwapTimeout},
	} {
		if *d.v < 0 {
			return c, configError(d.name, "%v is negative: give a positive duration such as %q", *d.v, d.def.String())
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if c.Threshold < 0 {
		return c, configError("threshold", "%d is negative: give the number of failed probes in a row (default %d)", c.Threshold, DefaultThreshold)
	}
	if c.Threshold == 0 {
		c.Threshold = DefaultThreshold
	}
	switch c.Failback {
	case "":
		c.Failback = FailbackManual
	case FailbackManual:
	case FailbackAuto:
		if c.Preferred == "" {
			return c, configError("preferred", `failback "auto" needs the node id of the host the service returns to`)
		}
	default:
		return c, configError("failback", "%q: want %q or %q", c.Failback, FailbackManual, FailbackAuto)
	}
	if c.ReadyCheck != nil {
		h := *c.ReadyCheck
		if h.Name == "" {
			h.Name = "ready_check"
		}
		if err := h.check("ready_check"); err != nil {
			return c, err
		}
		c.ReadyCheck = &h
	}
	var err error
	if c.Promote, err = checkHooks("promote", c.Promote); err != nil {
		return c, err
	}
	if c.Demote, err = checkHooks("demote", c.Demote); err != nil {
		return c, err
	}
	return c, nil
}

func checkURL(field, s string) error {
	if rest, ok := strings.CutPrefix(s, "ldapi://"); ok {
		// The socket path is the host, percent-encoded (%2F), which
		// net/url refuses; go-ldap decodes it itself.
		host, _, _ := strings.Cut(rest, "/")
		if _, err := url.PathUnescape(host); err != nil {
			return configError(field, "%q: bad socket path encoding: %v", s, err)
		}
		return nil
	}
	u, err := url.Parse(s)
	if err != nil {
		return configError(field, "%v", err)
	}
	switch u.Scheme {
	case "ldap", "ldaps", "ldapi":
	default:
		return configError(field, "%q: want an ldap://, ldaps:// or ldapi:// URL", s)
	}
	if u.Host == "" {
		return configError(field, "%q has no host: write it as %s://host:port", s, u.Scheme)
	}
	return nil
}

func checkHooks(seq string, hooks []Hook) ([]Hook, error) {
	out := make([]Hook, len(hooks))
	seen := map[string]bool{}
	for i, h := range hooks {
		field := fmt.Sprintf("%s[%d]", seq, i)
		if err := h.check(field); err != nil {
			return nil, err
		}
		if seen[h.Name] {
			return nil, configError(field+".name", "%q is used twice in %s: names must be unique", h.Name, seq)
		}
		seen[h.Name] = true
		if h.Timeout == 0 {
			h.Timeout = DefaultHookTimeout
		}
		out[i] = h
	}
	return out, nil
}

func (h *Hook) check(field string) error {
	if !hookName.MatchString(h.Name) {
		return configError(field+".name", "%q: give 1 to 64 letters, digits, '.', '_' or '-'", h.Name)
	}
	if strings.TrimSpace(h.Command) == "" {
		return configError(field+".command", "hook %q has no command", h.Name)
	}
	if h.Timeout < 0 {
		return configError(field+".timeout", "%v is negative", h.Timeout)
	}
	if h.Timeout == 0 {
		h.Timeout = DefaultHookTimeout
	}
	return nil
}

// File is the agent's configuration as a file holds it: the JSON file of
// --agent-config, or the [agent] table of a resource file (package
// resource). Durations are strings, so that a bad one is reported with
// its key; Config checks it and fills in defaults.
type File struct {
	PeerURL         string     `json:"peer_url" toml:"peer_url"`
	LocalURL        string     `json:"local_url" toml:"local_url"`
	BindDN          string     `json:"bind_dn" toml:"bind_dn"`
	Password        string     `json:"password" toml:"password"`
	PasswordFile    string     `json:"password_file" toml:"password_file"`
	ReadDN          string     `json:"read_dn" toml:"read_dn"`
	CanaryDN        string     `json:"canary_dn" toml:"canary_dn"`
	CanaryAttr      string     `json:"canary_attr" toml:"canary_attr"`
	Interval        string     `json:"interval" toml:"interval"`
	Timeout         string     `json:"timeout" toml:"timeout"`
	Threshold       int        `json:"threshold" toml:"threshold"`
	MinSwapInterval string     `json:"min_swap_interval" toml:"min_swap_interval"`
	Failback        string     `json:"failback" toml:"failback"`
	FailbackAfter   string     `json:"failback_after" toml:"failback_after"`
	Preferred       string     `json:"preferred" toml:"preferred"`
	ReadyCheck      *FileHook  `json:"ready_check" toml:"ready_check"`
	ReadyInterval   string     `json:"ready_interval" toml:"ready_interval"`
	Promote         []FileHook `json:"promote" toml:"promote"`
	Demote          []FileHook `json:"demote" toml:"demote"`
	ControlTimeout  string     `json:"control_timeout" toml:"control_timeout"`
	SwapTimeout     string     `json:"swap_timeout" toml:"swap_timeout"`
}

// FileHook is a Hook as a file holds it.
type FileHook struct {
	Name    string `json:"name" toml:"name"`
	Command string `json:"command" toml:"command"`
	Timeout string `json:"timeout" toml:"timeout"`
}

// LoadConfig reads a JSON agent configuration from path, checks it and
// fills in defaults. Unknown keys are refused. Every error wraps ErrConfig
// and names the file, the key and what to fix.
func LoadConfig(path string) (Config, error) {
	// It names commands the agent runs as root and may hold a password.
	if err := fileperm.CheckPrivate(path); err != nil {
		return Config{}, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	c, err := parseConfig(b, filepath.Dir(path))
	if err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

func parseConfig(b []byte, dir string) (Config, error) {
	var f File
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return Config{}, jsonError(b, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return Config{}, fmt.Errorf("%w: data after the closing brace of the configuration object", ErrConfig)
	}
	return f.Config(dir)
}

// Config checks f and returns the configuration it describes, with the
// defaults filled in; dir is the directory a relative password_file is
// read from. Every error wraps ErrConfig and names the key.
func (f File) Config(dir string) (Config, error) {
	c := Config{
		PeerURL: f.PeerURL, LocalURL: f.LocalURL,
		BindDN: f.BindDN, Password: f.Password, PasswordFile: f.PasswordFile,
		ReadDN: f.ReadDN, CanaryDN: f.CanaryDN, CanaryAttr: f.CanaryAttr,
		Threshold: f.Threshold, Failback: f.Failback, Preferred: f.Preferred,
	}
	if c.PasswordFile != "" && !filepath.IsAbs(c.PasswordFile) {
		c.PasswordFile = filepath.Join(dir, c.PasswordFile)
	}
	type dur struct {
		name string
		s    string
		v    *time.Duration
	}
	durs := []dur{
		{"interval", f.Interval, &c.Interval},
		{"timeout", f.Timeout, &c.Timeout},
		{"min_swap_interval", f.MinSwapInterval, &c.MinSwapInterval},
		{"failback_after", f.FailbackAfter, &c.FailbackAfter},
		{"ready_interval", f.ReadyInterval, &c.ReadyInterval},
		{"control_timeout", f.ControlTimeout, &c.ControlTimeout},
		{"swap_timeout", f.SwapTimeout, &c.SwapTimeout},
	}
	hooks := func(seq string, fh []FileHook) []Hook {
		out := make([]Hook, len(fh))
		for i, h := range fh {
			out[i] = Hook{Name: h.Name, Command: h.Command}
			durs = append(durs, dur{fmt.Sprintf("%s[%d].timeout", seq, i), h.Timeout, &out[i].Timeout})
		}
		return out
	}
	c.Promote = hooks("promote", f.Promote)
	c.Demote = hooks("demote", f.Demote)
	if f.ReadyCheck != nil {
		c.ReadyCheck = &hooks("ready_check", []FileHook{*f.ReadyCheck})[0]
	}
	for _, d := range durs {
		if d.s == "" {
			continue
		}
		v, err := time.ParseDuration(d.s)
		if err != nil {
			return Config{}, configError(strings.Replace(d.name, "ready_check[0]", "ready_check", 1),
				"%q is not a duration: write it like \"500ms\", \"3s\" or \"2m\"", d.s)
		}
		if v <= 0 {
			return Config{}, configError(strings.Replace(d.name, "ready_check[0]", "ready_check", 1),
				"%q: give a positive duration, or leave the key out for the default", d.s)
		}
		*d.v = v
	}
	return c.withDefaults()
}

// jsonError turns a decoding error into one that says where and what.
func jsonError(b []byte, err error) error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Errorf("%w: line %d: %v", ErrConfig, lineOf(b, syn.Offset), syn)
	case errors.As(err, &typ):
		return fmt.Errorf("%w: %s (line %d): %s is not a valid %s", ErrConfig, typ.Field, lineOf(b, typ.Offset), typ.Value, typ.Type)
	case errors.Is(err, io.EOF):
		return fmt.Errorf("%w: the file is empty: it needs a JSON object with at least \"peer_url\"", ErrConfig)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return fmt.Errorf("%w: %s: not an agent option (see docs/agent.md for the list; check its spelling)", ErrConfig,
			strings.TrimPrefix(err.Error(), "json: "))
	}
	return fmt.Errorf("%w: %v", ErrConfig, err)
}

func lineOf(b []byte, off int64) int {
	off = min(max(off, 0), int64(len(b)))
	return 1 + bytes.Count(b[:off], []byte{'\n'})
}
