// Package metrics exports a data host's state and the data path's timings
// to Prometheus, like drbd-reactor's exporter: role, epoch, link,
// replication and disk states, dirty blocks, what was shipped and
// applied, write and peer-ack latency histograms, resync progress, the
// async journal, the LDAP agent's failovers and hooks, the probe. It is
// off unless the resource file's metrics_listen (--metrics-listen) names
// an address; docs/operations.md ("Metrics") lists every series.
package metrics
