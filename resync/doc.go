// Package resync decides how two hosts of a volume get back in sync: which
// side is the source, whether the blocks that differ are known, or whether
// their histories diverged (split brain).
//
// The decision comes from generation identifiers, modelled on DRBD's
// current, bitmap and history UUIDs. Every host keeps:
//
//   - Current: the identity of the data it holds now.
//   - Bitmap: the Current both hosts shared when this host started tracking
//     changes without its peer (0 when it tracks none).
//   - History: older Currents, newest first.
//
// A primary that loses its peer, or comes back from a crash, starts a new
// generation: Bitmap takes the old Current and Current gets a new random
// value. When the hosts meet again, the one whose Bitmap equals the other's
// Current wrote since they last agreed and is the source; if both wrote
// (their Bitmaps match but their Currents differ) it is split brain.
package resync
