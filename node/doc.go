// Package node wires one data host of a mirrored volume: its metadata and
// backing file, the Mirror (primary) or Replica (secondary), the peer link
// with reconnects, the FUSE export, and the control socket that
// `ldmirror status` reads.
package node
