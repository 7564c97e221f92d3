package main

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"regexp"
	"strings"
	"testing"
)

// TestLogFormats: json is one object a line with the component key;
// text under journald starts with the syslog priority and leaves the time
// to the journal; an unknown format is refused.
func TestLogFormats(t *testing.T) {
	var buf bytes.Buffer
	h, err := logHandler(&buf, "json", slog.LevelInfo, false)
	if err != nil {
		t.Fatal(err)
	}
	slog.New(h).With(componentKey, "node").Warn("peer link lost", "peer", "b")
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil || rec["component"] != "node" || rec["level"] != "WARN" || rec["peer"] != "b" {
		t.Fatalf("json record %q: %v", buf.String(), err)
	}

	buf.Reset()
	h, err = logHandler(&buf, "text", slog.LevelInfo, true)
	if err != nil {
		t.Fatal(err)
	}
	l := slog.New(h).With(componentKey, "daemon")
	l.Error("control plane member failed")
	l.Info("serving")
	l.Debug("not shown")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "<3>level=ERROR") || !strings.HasPrefix(lines[1], "<6>level=INFO msg=serving component=daemon") {
		t.Fatalf("journald lines %q", lines)
	}
	if regexp.MustCompile(`time=`).MatchString(buf.String()) {
		t.Fatalf("journald lines carry a time: %q", buf.String())
	}
	if _, err := logHandler(&buf, "xml", slog.LevelInfo, false); err == nil {
		t.Fatal("--log-format xml accepted")
	}
}

// TestVersion: --version prints the version, the commit and the Go
// version from the build info.
func TestVersion(t *testing.T) {
	app := newApp()
	var out bytes.Buffer
	app.Writer = &out
	if err := app.Run([]string{"ldmirror", "--version"}); err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^ldmirror \S+ \(commit \S+.*\), built with go1\.\d+`).MatchString(out.String()) {
		t.Fatalf("--version printed %q", out.String())
	}
}
