// Package volume is a volume's identity on one host and its directory:
// meta.json (UUID, size, block size, generation identifiers, whether the
// primary stopped cleanly), the names of the files beside it (the backing
// file, the scoreboard, the journal, the export, the control socket) and
// the lock that keeps a second daemon off the directory.
package volume
