// Package resource reads resource files: /etc/ldmirror/<name>.toml, one
// mirrored volume described for all its hosts, like DRBD's
// /etc/drbd.d/<name>.res. The same file is copied to both data hosts and
// the witness; each finds its own section by node ID ([[host]] or
// [witness]). The format, every key and its default are in
// docs/operations.md ("Resource files").
//
// Load checks the whole file: an unknown key, a value that does not parse,
// a missing or duplicated host is an *Error naming the file, the line and
// the fix, and Load returns all of them at once. What a host runs with is
// then the file's values for it, overridden by the command line's flags
// (cmd/ldmirror maps keys to flags).
package resource
