// Package events turns a data host's status into a stream of state
// changes, one JSON object each, for `ldmirror events` (like DRBD's
// `drbdsetup events2`): the state when the stream starts ("exists"), then
// one event per change of role, link, replication state, disk state,
// epoch or named primary, resync progress every few seconds, and the LDAP
// agent's failovers, swaps and hooks, and a split brain.
//
// Changes are found by comparing the host's status (node.Status) every
// 100 ms: a state that lasts less than that may not show.
// docs/operations.md ("Events") lists every event.
package events
