package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConfigCheckRefusals: `ldmirror config check r0` fails on an unknown
// key, a missing host section and a duplicate node ID, and says where
// and how to fix it.
func TestConfigCheckRefusals(t *testing.T) {
	example, err := os.ReadFile("../../packaging/r0.toml")
	if err != nil {
		t.Fatal(err)
	}
	good := string(example)
	// line is the number of the line of good that starts with prefix.
	line := func(prefix string) int {
		for i, l := range strings.Split(good, "\n") {
			if strings.HasPrefix(l, prefix) {
				return i + 1
			}
		}
		t.Fatalf("the example has no line %q", prefix)
		return 0
	}
	hostB := strings.Index(good, "[[host]]\nid = \"b\"")
	hostBLine := strings.Count(good[:hostB], "\n") + 2 // its id line
	for _, tc := range []struct {
		name, file string
		want       []string
	}{
		{"unknown key", strings.Replace(good, `rate = "100MiB"`, `rat = "100MiB"`, 1),
			[]string{fmt.Sprintf("r0.toml:%d: resync.rat: unknown key in [resync]; did you mean rate?", line("rate ="))}},
		{"missing host section", good[:hostB] + good[strings.Index(good, "[witness]"):],
			[]string{fmt.Sprintf("r0.toml:%d: host: a pair needs two [[host]] sections, found 1: add one for each data host", line("[[host]]"))}},
		{"duplicate node ID", strings.Replace(good, `id = "b"`, `id = "a"`, 1),
			[]string{fmt.Sprintf(`r0.toml:%d: [[host]] #2 id: "a" is also the id of [[host]] #1 (line %d): node IDs must differ; give each node its own`,
				hostBLine, line(`id = "a"`))}},
		{"no section for this node", good,
			[]string{`no [[host]] or [witness] has id = "c", this node's ID: add its section, or run with --node-id a, b or w`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "r0.toml"), []byte(tc.file), 0o600); err != nil {
				t.Fatal(err)
			}
			app := newApp()
			var stdout, stderr bytes.Buffer
			app.Writer, app.ErrWriter = &stdout, &stderr
			node := "a"
			if tc.name == "no section for this node" {
				node = "c"
			}
			err := app.Run([]string{"ldmirror", "--config-dir", dir, "config", "check", "r0", "--node-id", node})
			if err == nil {
				t.Fatalf("config check passed:\n%s", stdout.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("config check's errors:\n%s\nwant them to contain %q", stderr.String(), w)
				}
			}
		})
	}
}
