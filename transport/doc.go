// Package transport is the peer wire protocol between the two hosts of a
// mirrored volume.
//
// Every frame is a 32-byte header followed by a payload:
//
//	0  magic   "LDM1"
//	4  type    Hello, Auth, Write, Trim, Flush, Ack, Ping, Pong, Error,
//	           Generation, Checksum, Ready, OutOfSync, Journal
//	5  flags   must be 0
//	6  reserved, must be 0
//	8  length  payload bytes, at most MaxPayload
//	12 crc32c  Castagnoli, over the payload and then the header (this field zero)
//	16 seq     sequence number of the request (or of the request an Ack answers)
//	24 epoch   the sender's epoch: frames from an older epoch are refused
//
// A connection starts with a handshake: both sides send Hello (protocol
// version, node identity, volume identity and geometry, a random nonce), then
// Auth, an HMAC-SHA256 over both Hellos keyed with the shared secret. No data
// frame is accepted before both Auths verified and the volumes matched; the
// acceptor then sends Ready (or an Error saying why it refuses).
//
// After the handshake the primary's Session pipelines Write, Trim and Flush
// requests with a bounded window of outstanding frames; the secondary's
// ServerSession hands them to a Handler, which may apply them in parallel and
// acknowledges each one by sequence number. A Flush is a barrier: it is
// acknowledged only after every earlier request was applied and made durable.
//
// In async mode the primary ships its journal's records as Journal frames,
// whose payload is
//
//	0  journal id   the identity of the primary's journal
//	8  journal seq  the record's sequence number in it (not the frame seq)
//	16 kind         1 write, 2 trim, 3 flush
//	17 flags        bit 0: ordered (apply after every earlier request and
//	                before any later one; a journal catch-up sets it)
//	18 reserved, must be 0 (6 bytes)
//	24 offset
//	32 a write's data, or a trim's length (8 bytes), or nothing for a flush
//
// The frame seq stays the per-connection sequence; the journal seq is
// durable and continues across connections and restarts. The ack of any
// flush may carry the secondary's durable applied journal position (its
// journal id and seq, 16 bytes), from which the primary resumes a catch-up
// and truncates its journal.
package transport
