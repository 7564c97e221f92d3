// Package failpoint crashes the process at named points of the data path,
// so that the end-to-end tests can kill a daemon exactly where a crash
// matters (docs/reliability.md, "Crash points") instead of hoping a random
// SIGKILL lands there.
//
// The points are compiled in only under the build tag "failpoints"; without
// it Reached is a constant false and the compiler drops every point. The
// model is etcd's gofail, without its source rewriting step: a point is a
// plain call, so the code that is tested is the code that ships.
//
// A binary built with the tag reads LDMIRROR_FAILPOINTS once, at start: a
// comma-separated list of name or name@N, which kills the process with
// SIGKILL the first (or the Nth) time the point is reached, after one line
// on stderr naming it.
package failpoint

// EnvVar names the points to arm.
const EnvVar = "LDMIRROR_FAILPOINTS"
