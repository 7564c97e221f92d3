// Package proxy is an LDAP server that relays every client operation through
// a retrier.Session, so unmodified clients (ldapsearch, ldapadd, SSSD) get
// the call retrier's failover, deadlines and idempotent writes.
//
// Each client connection has its own Session: a client's bind is relayed to
// the backends and replayed on every backend connection, so the client's
// identity is preserved on both servers. Search results are streamed back as
// they arrive; request controls (e.g. paged results) are passed to the
// backend and its response controls back to the client.
//
// Requests are decoded with github.com/go-asn1-ber/asn1-ber and
// github.com/go-ldap/ldap/v3 (filters, controls). A message that cannot be
// decoded, is larger than Config.MaxMessageSize or carries an unknown
// operation closes that client's connection with a Notice of Disconnection
// and a logged reason; other clients are unaffected.
//
// Shutdown refuses new connections, answers operations that arrive
// meanwhile with unavailable (52), waits for the operations in flight to
// complete (bounded by its context) and then closes the connections.
package proxy
