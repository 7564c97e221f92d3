package agent

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent.json")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestLoadConfig reads a full configuration and checks every field.
func TestLoadConfig(t *testing.T) {
	p := writeConfig(t, `{
		"peer_url": "ldap://10.0.0.2:389",
		"local_url": "ldapi://%2Frun%2Fslapd%2Fldapi",
		"bind_dn": "cn=monitor,dc=example,dc=com",
		"password_file": "probe.pw",
		"read_dn": "dc=example,dc=com",
		"canary_dn": "cn=canary,dc=example,dc=com",
		"canary_attr": "description",
		"interval": "500ms", "timeout": "1s", "threshold": 4,
		"min_swap_interval": "2m",
		"failback": "auto", "failback_after": "10m", "preferred": "a",
		"ready_check": {"command": "slaptest -u", "timeout": "5s"},
		"ready_interval": "15s",
		"promote": [
			{"name": "attach", "command": "ldmirror attach", "timeout": "20s"},
			{"name": "start-slapd", "command": "slapd"}
		],
		"demote": [{"name": "stop-slapd", "command": "pkill slapd"}],
		"control_timeout": "5s", "swap_timeout": "90s"
	}`)
	if err := os.WriteFile(filepath.Join(filepath.Dir(p), "probe.pw"), []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := LoadConfig(p)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		PeerURL: "ldap://10.0.0.2:389", LocalURL: "ldapi://%2Frun%2Fslapd%2Fldapi",
		BindDN: "cn=monitor,dc=example,dc=com", Password: "s3cret", PasswordFile: filepath.Join(filepath.Dir(p), "probe.pw"),
		ReadDN: "dc=example,dc=com", CanaryDN: "cn=canary,dc=example,dc=com", CanaryAttr: "description",
		Interval: 500 * time.Millisecond, Timeout: time.Second, Threshold: 4,
		MinSwapInterval: 2 * time.Minute, Failback: FailbackAuto, FailbackAfter: 10 * time.Minute, Preferred: "a",
		ReadyCheck:    &Hook{Name: "ready_check", Command: "slaptest -u", Timeout: 5 * time.Second},
		ReadyInterval: 15 * time.Second,
		Promote: []Hook{
			{Name: "attach", Command: "ldmirror attach", Timeout: 20 * time.Second},
			{Name: "start-slapd", Command: "slapd", Timeout: DefaultHookTimeout},
		},
		Demote:         []Hook{{Name: "stop-slapd", Command: "pkill slapd", Timeout: DefaultHookTimeout}},
		ControlTimeout: 5 * time.Second, SwapTimeout: 90 * time.Second,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("config\n got %+v\nwant %+v", got, want)
	}
}

// TestLoadConfigDefaults: only peer_url is required.
func TestLoadConfigDefaults(t *testing.T) {
	got, err := LoadConfig(writeConfig(t, `{"peer_url": "ldap://b:389"}`))
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		PeerURL: "ldap://b:389", Interval: DefaultInterval, Timeout: DefaultTimeout, Threshold: DefaultThreshold,
		MinSwapInterval: DefaultMinSwapInterval, Failback: FailbackManual, FailbackAfter: DefaultFailbackAfter,
		ReadyInterval: DefaultReadyInterval, ControlTimeout: DefaultControlTimeout, SwapTimeout: DefaultSwapTimeout,
		Promote: []Hook{}, Demote: []Hook{},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("config\n got %+v\nwant %+v", got, want)
	}
}

// TestLoadConfigErrors: every error wraps ErrConfig and names the key (or
// line) and what to fix.
func TestLoadConfigErrors(t *testing.T) {
	const hooks = `"promote": [{"name": "start", "command": "slapd"}]`
	for _, tc := range []struct {
		name, body string
		want       string
	}{
		{"empty file", ``, "the file is empty"},
		{"not json", `{"peer_url": "ldap://b",}`, "line 1: invalid character '}'"},
		{"syntax error line", "{\n\"peer_url\": \"ldap://b\"\n\"interval\": \"1s\"}", "line 3"},
		{"trailing data", `{"peer_url": "ldap://b"} {}`, "data after the closing brace"},
		{"unknown key", `{"peer_url": "ldap://b", "peer_uri": "x"}`, `unknown field "peer_uri": not an agent option`},
		{"unknown hook key", `{"peer_url": "ldap://b", "promote": [{"name": "x", "cmd": "y"}]}`, `unknown field "cmd"`},
		{"wrong type", `{"peer_url": "ldap://b", "threshold": "3"}`, "threshold (line 1): string is not a valid int"},
		{"missing peer_url", `{` + hooks + `}`, "peer_url: required"},
		{"bad peer_url scheme", `{"peer_url": "http://b"}`, `peer_url: "http://b": want an ldap://, ldaps:// or ldapi:// URL`},
		{"peer_url without host", `{"peer_url": "ldap://"}`, "peer_url: \"ldap://\" has no host"},
		{"bad local_url", `{"peer_url": "ldap://b", "local_url": "b:389"}`, "local_url:"},
		{"bad duration", `{"peer_url": "ldap://b", "interval": "3"}`, `interval: "3" is not a duration: write it like`},
		{"negative duration", `{"peer_url": "ldap://b", "min_swap_interval": "-1m"}`, "min_swap_interval: \"-1m\": give a positive duration"},
		{"bad hook timeout", `{"peer_url": "ldap://b", "demote": [{"name": "x", "command": "y", "timeout": "soon"}]}`, `demote[0].timeout: "soon" is not a duration`},
		{"bad ready_check timeout", `{"peer_url": "ldap://b", "ready_check": {"command": "y", "timeout": "0s"}}`, `ready_check.timeout: "0s": give a positive duration`},
		{"negative threshold", `{"peer_url": "ldap://b", "threshold": -1}`, "threshold: -1 is negative"},
		{"bad failback", `{"peer_url": "ldap://b", "failback": "yes"}`, `failback: "yes": want "manual" or "auto"`},
		{"auto without preferred", `{"peer_url": "ldap://b", "failback": "auto"}`, `preferred: failback "auto" needs the node id`},
		{"hook without name", `{"peer_url": "ldap://b", "promote": [{"command": "slapd"}]}`, `promote[0].name: "": give 1 to 64 letters`},
		{"hook with bad name", `{"peer_url": "ldap://b", "promote": [{"name": "start slapd", "command": "slapd"}]}`, `promote[0].name: "start slapd"`},
		{"hook without command", `{"peer_url": "ldap://b", "demote": [{"name": "stop", "command": " "}]}`, `demote[0].command: hook "stop" has no command`},
		{"duplicate hook", `{"peer_url": "ldap://b", "promote": [{"name": "x", "command": "a"}, {"name": "x", "command": "b"}]}`, `promote[1].name: "x" is used twice`},
		{"ready_check without command", `{"peer_url": "ldap://b", "ready_check": {"timeout": "1s"}}`, `ready_check.command: hook "ready_check" has no command`},
		{"password and file", `{"peer_url": "ldap://b", "bind_dn": "cn=x", "password": "p", "password_file": "f"}`, "password_file: set either password or password_file"},
		{"missing password file", `{"peer_url": "ldap://b", "bind_dn": "cn=x", "password_file": "/nonexistent/pw"}`, "password_file: open /nonexistent/pw"},
		{"password without bind_dn", `{"peer_url": "ldap://b", "password": "p"}`, "bind_dn: a password is set but no bind_dn"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writeConfig(t, tc.body)
			_, err := LoadConfig(p)
			if !errors.Is(err, ErrConfig) {
				t.Fatalf("err = %v, want ErrConfig", err)
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), p+": ") {
				t.Fatalf("err = %q, want the file name and %q", err, tc.want)
			}
		})
	}
	if _, err := LoadConfig(filepath.Join(t.TempDir(), "missing.json")); !errors.Is(err, ErrConfig) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

// TestDocSample keeps the sample configuration in docs/agent.md valid.
func TestDocSample(t *testing.T) {
	doc, err := os.ReadFile("../../docs/agent.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "```json\n")
	sample, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 {
		t.Fatal("docs/agent.md has no ```json sample")
	}
	p := writeConfig(t, sample)
	if err := os.WriteFile(filepath.Join(filepath.Dir(p), "probe.pw"), []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := LoadConfig(p)
	if err != nil {
		t.Fatalf("the documented sample does not load: %v", err)
	}
	if len(c.Promote) != 4 || len(c.Demote) != 4 || c.ReadyCheck == nil || c.Password != "secret" {
		t.Fatalf("sample loaded as %+v", c)
	}
	// Its hooks are valid shell.
	for _, h := range append(append([]Hook{*c.ReadyCheck}, c.Promote...), c.Demote...) {
		r := runHook(t.Context(), discard(), "syntax", Hook{Name: h.Name, Command: "sh -n -c '" + strings.ReplaceAll(h.Command, "'", `'\''`) + "'", Timeout: 5 * time.Second}, hookEnv{})
		if !r.OK() {
			t.Errorf("hook %s is not valid shell: %s %q", h.Name, r.Error, r.Tail)
		}
	}
}

// TestLoadConfigRefusesOpenFile: a configuration others may read (it names
// root hook commands and may hold a password) is refused, with the fix.
func TestLoadConfigRefusesOpenFile(t *testing.T) {
	p := writeConfig(t, `{"peer_url": "ldap://10.0.0.2:389"}`)
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := LoadConfig(p)
	if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "chmod 600 "+p) {
		t.Fatalf("LoadConfig of a 0644 file: %v, want ErrConfig naming chmod 600", err)
	}
}
