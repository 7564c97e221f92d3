// Package blockdev is the volume: the Device interface, a file-backed
// device, the Mirror that runs the replicated write path on the primary, the
// Replica that applies it on the secondary, and the frontends that expose a
// device to applications (a FUSE single-file export and a loop device).
//
// The write path (docs/design.md): a write marks its blocks dirty,
// is written locally and shipped to the peer at the same time, and its
// blocks are cleared only when the peer acknowledged it. A flush returns
// only when both hosts made every earlier acknowledged write durable.
package blockdev
