// Package proxy is an LDAP server that relays every client operation through
// a retrier.Session, so unmodified clients (ldapsearch, ldapadd, SSSD) get
// the call retrier's failover, deadlines and idempotent writes.
//
// Each client connection has its own Session, and all of them one
// retrier.Group: a client's bind is replayed on every backend connection,
// so the client's identity is preserved on both servers, and after one
// client's call fails over, new clients go to the server that answers.
//
// A request is relayed as the client sent it and the server's responses as
// the server sent them, with the message ID changed (retrier.Relay, package
// wire): requests are checked element by element (check.go) and only what
// the proxy acts on is decoded (binds, adds and modify DNs for the
// idempotent write rules, abandons, StartTLS). A message that is malformed,
// larger than the connection's limit or carries an unknown operation closes
// that client's connection with a Notice of Disconnection and a logged
// reason; other clients are unaffected.
//
// Hostile clients are bounded (docs/retrier.md, bounds): connections
// (Config.MaxConnections), operations in flight per connection
// (MaxOperations), request size before and after a bind with a password
// (MaxUnboundMessageSize, MaxMessageSize; memory follows the bytes
// received, not the length declared), idle time, and the time a client may
// take to read a response (WriteTimeout): one that stops reading is dropped
// and its operations are abandoned on the servers. A bind password is only
// accepted over TLS or a unix socket with RequireTLSForBind, and is kept
// for replay until the session closes or SessionLifetime ends it.
//
// Shutdown refuses new connections, answers operations that arrive
// meanwhile with unavailable (52), waits for the operations in flight to
// complete (bounded by its context) and then closes the connections.
package proxy
