package main

import (
	"fmt"
	"runtime/debug"

	"github.com/urfave/cli/v2"
)

// versionInfo is what the binary knows of how it was built (its build
// info): the module's version (a pseudo-version from the commit when built
// with VCS stamping, "(devel)" without), the commit and its time, whether
// the tree had changes, and the Go version.
type versionInfo struct {
	Version, Commit, Time, Go string
	Modified                  bool
}

func buildVersion() versionInfo {
	v := versionInfo{Version: "(devel)", Commit: "unknown"}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return v
	}
	v.Go = bi.GoVersion
	if bi.Main.Version != "" {
		v.Version = bi.Main.Version
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Commit = s.Value
		case "vcs.time":
			v.Time = s.Value
		case "vcs.modified":
			v.Modified = s.Value == "true"
		}
	}
	return v
}

func (v versionInfo) String() string {
	commit := "commit " + v.Commit
	if v.Time != "" {
		commit += " of " + v.Time
	}
	if v.Modified {
		commit += ", with uncommitted changes"
	}
	return fmt.Sprintf("ldmirror %s (%s), built with %s", v.Version, commit, v.Go)
}

// printVersion is --version.
func printVersion(c *cli.Context) {
	fmt.Fprintln(c.App.Writer, buildVersion())
}
