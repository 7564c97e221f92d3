// Package blockdev is the volume's storage as the rest of ldmirror sees it:
// the Device interface (ReadAt, WriteAt, Flush, Trim, Size) and the
// file-backed device every host keeps its copy of the volume in.
//
// The replicated write path is package mirror, the secondary's apply path
// package replica, and the frontends that expose a device to applications
// (FUSE, loop) package export.
package blockdev
