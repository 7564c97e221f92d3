// Package transport is the peer wire protocol between the two hosts of a
// mirrored volume.
//
// Every frame is a 32-byte header followed by a payload:
//
//	0  magic   "LDM1"
//	4  type    Hello, Auth, Write, Trim, Flush, Ack, Ping, Pong, Error,
//	           Generation, Checksum, Ready, OutOfSync, Journal, Stage
//	5  flags   must be 0
//	6  reserved, must be 0
//	8  length  payload bytes, at most MaxPayload
//	12 crc32c  Castagnoli, over the payload and then the header (this field
//	           zero); on a TLS link after the handshake always zero and not
//	           checked: TLS authenticates every record
//	16 seq     sequence number of the request (or of the request an Ack answers)
//	24 epoch   the sender's epoch: frames from an older epoch are refused
//
// The link runs inside TLS 1.3 with mutual authentication (Config's
// ServerTLS and ClientTLS, from package pki): each host presents its own
// certificate, verified against the pair's CA, and PeerID returns the node
// ID the peer's certificate names. TLS gives every frame integrity and
// confidentiality: a record altered, dropped, reordered, replayed or
// injected on the way fails TLS's authentication, and the session ends
// with ErrIntegrity; a replay of a recorded session fails the TLS
// handshake. Frames then carry no checksum of their own.
//
// Inside TLS a connection starts with a handshake: both sides send Hello
// (protocol version, node identity, volume identity and geometry, a random
// nonce); a Hello whose node ID is not the one the sender's certificate
// names is refused (ErrIdentity), so a host cannot claim another's ID.
// Both sides then check that they mirror the same volume and ask Admit
// (the secondary: is the peer the primary of the current epoch?); the
// acceptor sends Ready (or an Error saying why it refuses). A peer whose
// Hello has another protocol version is refused with an Error naming both
// versions; this is version 4 (version 1's checksum reply was CRC32C;
// version 2 had no Progress frame; version 3 had no Stage request).
//
// With Config.InsecurePlaintext (an explicit choice, for measurement) the
// frames travel in clear and the handshake is authenticated by a shared
// secret instead: after the Hellos the initiator sends Auth, an
// HMAC-SHA256 over both Hellos keyed with the secret; the acceptor
// verifies it before it sends its own Auth, so an unauthenticated client
// learns nothing to guess the secret from offline. After it, nothing
// protects the frames: an on-path attacker can read and rewrite them.
//
// Before the peer is authenticated, the largest frame accepted is a Hello
// (167 bytes), and a Listener authenticates at most MaxHandshakes
// connections at once: more are closed as soon as they are accepted.
//
// After the handshake the primary's Session pipelines Write, Trim and Flush
// requests with a bounded window of outstanding frames; the secondary's
// ServerSession hands them to a Handler, which may apply them in parallel and
// acknowledges each one by sequence number. A Flush is a barrier: it is
// acknowledged only after every earlier request was applied and made durable.
//
// A Checksum request (verify, and a resync that compares before it sends)
// has the payload
//
//	0  offset
//	8  length  bytes, at most MaxChecksumBlocks blocks
//	16 key     32 bytes the primary draws at random for this request
//
// and its Ack carries one 16-byte digest per block of the Hello's block size:
// the first 16 bytes of HMAC-SHA256 of the block keyed with the request's
// key. Not a CRC: ext4 ends metadata blocks with a seeded CRC32C of the bytes
// before it, which gives every version of such a block the same whole-block
// CRC32C (docs/design.md).
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
// A Stage request (docs/design.md, "A resync target that stays usable")
// drives the resync target's staging area; its payload is
//
//	0  op       1 begin (stage what follows), 2 commit (the resync
//	            completed: apply it), 3 status
//	1  reserved, must be 0 (7 bytes)
//	8  need     bytes a begin expects to stage; 0 for the others
//
// and its Ack carries the area's state:
//
//	0  state    0 idle, 1 staging, 2 applying, 3 unprotected (the target
//	            takes the resync without staging it), 4 refused
//	1  reserved, 0 (7 bytes)
//	8  as of    unix ns: the time the staging target's volume is
//	            consistent as of
//	16 staged   bytes of its staging log
//	24 applied  blocks of a running apply done, then 32 their total
//	40 reason   why it does not stage (at most 512 bytes)
//
// The frame seq stays the per-connection sequence; the journal seq is
// durable and continues across connections and restarts. The ack of any
// flush may carry the secondary's durable applied journal position (its
// journal id and seq, 16 bytes), from which the primary resumes a catch-up
// and truncates its journal.
package transport
