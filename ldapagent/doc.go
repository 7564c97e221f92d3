// Package ldapagent holds the directory-facing side of ldmirror: health
// probes of the local directory server, the role-swap trigger and its hooks,
// and (in subpackages) the call retrier that hides a failover from directory
// clients.
//
// Subpackages:
//
//   - probe: the health probe of a directory server (connect, bind, root
//     DSE, optional entry read and canary write) and a Monitor that declares
//     it down after a threshold of consecutive failures.
//   - retrier: a Go library; a Session sends each LDAP call to the primary or
//     the secondary server, retries calls that failed for availability
//     reasons, makes retried writes idempotent and holds signals while calls
//     are in flight.
//   - proxy: an LDAP server that relays every client operation through a
//     retrier Session, so unmodified clients get the same behaviour.
package ldapagent
