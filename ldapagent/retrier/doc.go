// Package retrier is the LDAP call retrier (docs/retrier.md).
//
// Open returns a Session for a primary and a secondary server. Each call
// (Bind, Search, Add, Modify, Delete, ModifyDN, Compare, Extended) goes to the
// server that answered last. If it fails with a connection error, a timeout or
// an availability result (see Retryable), it is retried on the other server,
// then on both with backoff, until the call's deadline. Only then does the
// caller see an error, an *AllServersError that matches ErrAllServersFailed
// and names both servers and their last errors. Other results are returned
// unchanged and never retried.
//
// A retried write may already have been applied by the server that failed, so
// retried writes are idempotent: an add that finds its own entry (the
// attributes it sends), a delete of a missing entry and a rename of a
// missing source succeed. An add that finds an entry someone else wrote
// fails with entryAlreadyExists and leaves it alone.
// Config.IdempotentWrites applies the same rules to every write.
//
// With Config.HoldSignals the session catches those signals while calls are
// in flight and handles them only after the calls complete (docs/retrier.md).
//
// Requests and results are the types of github.com/go-ldap/ldap/v3; the
// connections to the servers are the retrier's own (conn.go says why),
// framed by package wire and encoded with github.com/go-asn1-ber/asn1-ber.
// Relay runs an operation that is already encoded, for the proxy.
package retrier
