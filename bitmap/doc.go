// Package bitmap is the in-memory dirty-block set of a mirrored volume.
//
// A block is dirty while the two hosts may disagree about its contents: from
// the moment a write touching it is marked (before the local write is issued)
// until every write touching it has been acknowledged by the peer. A write
// that could not be shipped leaves its blocks out of sync until a resync
// clears them. Out-of-sync blocks are a roaring bitmap, so a clean or
// sparsely dirty volume of any size costs a few kilobytes; in-flight counts
// are kept only for blocks that currently have writes in flight, and a block
// with a count is dirty.
package bitmap
