// Package pki is the per-node identity of ldmirror's hosts: a small
// certificate authority for one pair (`ldmirror pki init`), node
// certificates (`ldmirror pki issue`), and the TLS 1.3 configurations the
// data link (package transport) and the cluster port (package cluster)
// authenticate with, mutually, from the same key pair.
//
// A node certificate names exactly one node, in a URI subject alternative
// name
//
//	ldmirror://data/<node-id>     a data host
//	ldmirror://witness/<node-id>  a witness
//
// where node-id matches [A-Za-z0-9._-]{1,64}. The role lives in the
// certificate, signed by the CA, so a witness's key cannot be used to join
// the data link, and a node cannot claim another node's ID: the ID a peer
// announces (in the data link's Hello, in a control-plane command) must be
// the one its certificate names. Certificates from an existing CA work the
// same way if they carry such a URI SAN and both the TLS server and client
// extended key usages (or none).
//
// All crypto is the standard library's: crypto/tls (TLS 1.3 only),
// crypto/x509 and crypto/ecdsa (P-256 keys).
//
// A Source holds the current key pair and CA pool and re-reads them on
// Reload (SIGHUP): handshakes after it use the new files, sessions
// established before it continue. See docs/operations.md.
package pki
