// Package wanlink relays TCP connections through an emulated wide-area
// link: a one-way delay each way (half the round trip), jitter and a
// bandwidth cap, so that benchmarks and tests on one machine can put
// distance between the two hosts of a pair.
//
// It exists because this project's test machines have no netem in their
// kernel (tbf, a rate limiter, works; a delay does not), and because
// toxiproxy, the usual tool for this in chaos tests, is not among the Go
// modules the build may use. The model is toxiproxy's latency and
// bandwidth toxics: each chunk read from one side is written to the other
// no earlier than its arrival plus the delay, and no earlier than the link
// finished sending the chunks before it at the capped rate. Jitter moves a
// chunk's due time by up to ± Jitter, but never before the chunk ahead of
// it: TCP delivers in order, so a late packet holds back the ones behind
// it, as it does on a real link.
//
// The relay buffers what is in flight, up to Config.Queue bytes per
// direction; past that its reader stops reading and the sender's socket
// buffer fills, as a link's bottleneck queue would.
package wanlink
