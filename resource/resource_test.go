package resource

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// example is the example the package ships (packaging/r0.toml).
func example(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile("../packaging/r0.toml")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestExampleIsValid(t *testing.T) {
	f, err := Parse("/etc/ldmirror/r0.toml", example(t))
	if err != nil {
		t.Fatal(err)
	}
	if f.Name != "r0" || f.Volume.Size != "10GiB" || len(f.Hosts) != 2 || f.Witness.ID != "w" {
		t.Fatalf("parsed %+v", f)
	}
	s, err := f.Section("b")
	if err != nil || s.Role != RoleData || s.Host.Link != "10.0.0.2:7789" || s.Peer.ID != "a" {
		t.Fatalf("Section(b) = %+v, %v", s, err)
	}
	if s, err := f.Section("w"); err != nil || s.Role != RoleWitness {
		t.Fatalf("Section(w) = %+v, %v", s, err)
	}
	if got := f.Line("host[1].link"); got != 37 {
		t.Fatalf("line of host[1].link = %d, want 37", got)
	}
	if f.VolumeDir(s.Host) != "/var/lib/ldmirror/r0" || f.TLSOf(s.Host.TLSDir).Dir != "/etc/ldmirror/tls" {
		t.Fatalf("per-host values: %q %+v", f.VolumeDir(s.Host), f.TLSOf(s.Host.TLSDir))
	}
}

// TestREADMEExample: the resource file README.md shows in full, "Install
// and run a pair", is valid.
func TestREADMEExample(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	start := strings.Index(readme, "One resource file, `/etc/ldmirror/r0.toml`")
	end := strings.Index(readme, "Check it, copy it")
	if start < 0 || end < start {
		t.Fatal("README.md has no resource file between \"One resource file\" and \"Check it, copy it\"")
	}
	var file strings.Builder
	for _, line := range strings.Split(readme[start:end], "\n") {
		if code, ok := strings.CutPrefix(line, "    "); ok {
			file.WriteString(code + "\n")
		} else if line == "" {
			file.WriteString("\n")
		}
	}
	f, err := Parse("/etc/ldmirror/r0.toml", []byte(file.String()))
	if err != nil {
		t.Fatalf("README's resource file: %v\n%s", err, file.String())
	}
	if _, err := f.Section("a"); err != nil || len(f.Hosts) != 2 || f.Witness.ID != "w" {
		t.Fatalf("README's resource file: section a: %v; %d hosts, witness %q", err, len(f.Hosts), f.Witness.ID)
	}
}

func TestNoSection(t *testing.T) {
	f, err := Parse("/etc/ldmirror/r0.toml", example(t))
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.Section("c")
	if !errors.Is(err, ErrNoSection) || !errors.Is(err, ErrInvalid) {
		t.Fatalf("Section(c): %v; want ErrNoSection and ErrInvalid", err)
	}
	for _, want := range []string{"r0.toml:29: host:", `id = "c"`, "--node-id a, b or w"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("Section(c): %v; want it to contain %q", err, want)
		}
	}
}

const minimal = `[volume]
size = "64MiB"
dir = "/v"

[tls]
dir = "/t"

[[host]]
id = "a"
link = "10.0.0.1:7789"
cluster = "10.0.0.1:7400"

[[host]]
id = "b"
link = "10.0.0.2:7789"
cluster = "10.0.0.2:7400"

[witness]
id = "w"
cluster = "10.0.0.3:7400"
dir = "/w"
`

// TestErrors: each mistake is refused with its line, its key and the fix.
func TestErrors(t *testing.T) {
	if _, err := Parse("r0.toml", []byte(minimal)); err != nil {
		t.Fatalf("minimal file: %v", err)
	}
	for _, tc := range []struct {
		name      string
		edit      func(string) string
		wantLines []string
	}{
		{"unknown key", func(s string) string { return strings.Replace(s, `size = "64MiB"`, `sise = "64MiB"`, 1) },
			[]string{`r0.toml:2: volume.sise: unknown key in [volume]; did you mean size?`}},
		{"unknown top-level key", func(s string) string { return "modus = \"sync\"\n" + s },
			[]string{`r0.toml:1: modus: unknown key at the top of the file; did you mean mode?`}},
		{"unknown host key", func(s string) string {
			return strings.Replace(s, `link = "10.0.0.2:7789"`, `address = "10.0.0.2:7789"`, 1)
		},
			[]string{`r0.toml:15: host.address: unknown key in [host]; known keys: cluster, dir, id, ldap, link, metrics_listen, mount, tls_dir`}},
		{"missing host section", func(s string) string {
			i := strings.Index(s, "[[host]]\nid = \"b\"")
			j := strings.Index(s, "[witness]")
			return s[:i] + s[j:]
		}, []string{`r0.toml:8: host: a pair needs two [[host]] sections, found 1: add one for each data host`}},
		{"duplicate node ID", func(s string) string { return strings.Replace(s, `id = "b"`, `id = "a"`, 1) },
			[]string{`r0.toml:14: [[host]] #2 id: "a" is also the id of [[host]] #1 (line 9): node IDs must differ`}},
		{"witness with a data host's ID", func(s string) string { return strings.Replace(s, `id = "w"`, `id = "b"`, 1) },
			[]string{`r0.toml:19: witness.id: "b" is also the id of [[host]] "b" (line 14)`}},
		{"no witness", func(s string) string { return s[:strings.Index(s, "[witness]")] },
			[]string{`no [witness] section`}},
		{"wrong type", func(s string) string { return "window = \"64\"\n" + s },
			[]string{`r0.toml:1: window: cannot decode TOML string: want a number without quotes`}},
		{"bad values", func(s string) string {
			s = strings.Replace(s, `size = "64MiB"`, `size = "64 megs"`, 1)
			s = strings.Replace(s, `link = "10.0.0.2:7789"`, `link = "10.0.0.2"`, 1)
			return "mode = \"fast\"\ntimeout = \"5\"\n[resync]\nrate = \"lots\"\n" + s
		}, []string{
			`r0.toml:1: mode: replication mode "fast": want sync or async`,
			`r0.toml:2: timeout: "5" is not a duration`,
			`r0.toml:4: resync.rate: "lots" is not a size`,
			`r0.toml:6: volume.size: "64 megs" is not a size`,
			`r0.toml:19: [[host]] "b" link: "10.0.0.2" is not host:port`,
		}},
		{"same port twice", func(s string) string { return strings.Replace(s, `10.0.0.2:7400`, `10.0.0.1:7400`, 1) },
			[]string{`r0.toml:16: [[host]] "b" cluster: 10.0.0.1:7400 is also [[host]] "a" cluster (line 11)`}},
		{"agent error at its key", func(s string) string {
			s = strings.Replace(s, `cluster = "10.0.0.1:7400"`, "cluster = \"10.0.0.1:7400\"\nldap = \"ldap://10.0.0.1\"", 1)
			s = strings.Replace(s, `cluster = "10.0.0.2:7400"`, "cluster = \"10.0.0.2:7400\"\nldap = \"ldap://10.0.0.2\"", 1)
			return s + "[agent]\ninterval = \"soon\"\n[[agent.promote]]\nname = \"start\"\n"
		}, []string{`r0.toml:25: agent.interval: "soon" is not a duration`}},
		{"agent needs the hosts' ldap", func(s string) string { return s + "[agent]\nthreshold = 2\n" },
			[]string{`ldap: required`}},
		{"relative path", func(s string) string { return strings.Replace(s, `dir = "/w"`, `dir = "w"`, 1) },
			[]string{`r0.toml:21: witness.dir: "w": give an absolute path`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("r0.toml", []byte(tc.edit(minimal)))
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v; want ErrInvalid", err)
			}
			for _, want := range tc.wantLines {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("err:\n%v\nwant it to contain\n%s", err, want)
				}
			}
		})
	}
}

// TestLoadRefusesReadableAgent: a file with [agent] (root commands, maybe
// a password) must be 0600, like the agent's JSON configuration.
func TestLoadRefusesReadableAgent(t *testing.T) {
	dir := t.TempDir()
	body := strings.Replace(minimal, `cluster = "10.0.0.1:7400"`, "cluster = \"10.0.0.1:7400\"\nldap = \"ldap://10.0.0.1\"", 1)
	body = strings.Replace(body, `cluster = "10.0.0.2:7400"`, "cluster = \"10.0.0.2:7400\"\nldap = \"ldap://10.0.0.2\"", 1)
	body += "[agent]\nthreshold = 2\n"
	p := filepath.Join(dir, "r1.toml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir, "r1"); err == nil || !strings.Contains(err.Error(), "chmod 600 "+p) {
		t.Fatalf("Load of a 0644 file with [agent]: %v; want chmod 600", err)
	}
	if err := os.Chmod(p, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := Load(dir, "r1")
	if err != nil {
		t.Fatal(err)
	}
	s, _ := f.Section("a")
	c, err := f.AgentConfig(s)
	if err != nil || c.PeerURL != "ldap://10.0.0.2" || c.LocalURL != "ldap://10.0.0.1" || c.Threshold != 2 {
		t.Fatalf("agent config of a: %+v, %v", c, err)
	}
	if _, err := Load(dir, "r2"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Load of a missing resource: %v; want ErrNotFound", err)
	}
	if names, err := Names(dir); err != nil || len(names) != 1 || names[0] != "r1" {
		t.Fatalf("Names = %v, %v", names, err)
	}
}
