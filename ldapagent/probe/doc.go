// Package probe checks the health of a directory server the way a client
// sees it: connect, bind, read the root DSE, optionally read a configured
// entry and write a canary entry, each within one probe's timeout. A
// Monitor runs probes at an interval and declares the server down after a
// threshold of consecutive failures, which is what the agent acts on.
package probe
