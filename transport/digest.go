package transport

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
)

// BlockDigests returns the digest of each block of blockSize bytes in buf,
// ChecksumDigestSize bytes a block: the first bytes of HMAC-SHA256 keyed
// with key. It is what a checksum request's reply holds, computed the same
// way on both hosts.
//
// Not CRC32C: a CRC is affine, and ext4 (metadata_csum) ends extent and
// other metadata blocks with a seeded CRC32C of the bytes before it, so
// every version of such a block has the same whole-block CRC32C (issue 13,
// docs/design.md). SHA-256 has no such structure and runs on the CPU's SHA
// extensions where present; docs/benchmarks.md has the measured choice.
//
// 16 bytes are plenty: the key is new for each request and drawn after the
// primary locked the run, so no one can search for a colliding block
// beforehand, and a block that differs matches by chance with probability
// 2^-128.
func BlockDigests(buf []byte, blockSize int, key *[ChecksumKeySize]byte) []byte {
	mac := hmac.New(sha256.New, key[:])
	sums := make([]byte, 0, ChecksumDigestSize*((len(buf)+blockSize-1)/blockSize))
	var sum [sha256.Size]byte
	for i := 0; i < len(buf); i += blockSize {
		mac.Reset()
		mac.Write(buf[i:min(i+blockSize, len(buf))])
		sums = append(sums, mac.Sum(sum[:0])[:ChecksumDigestSize]...)
	}
	return sums
}

// NewChecksumKey draws the key of one checksum request.
func NewChecksumKey() *[ChecksumKeySize]byte {
	key := new([ChecksumKeySize]byte)
	rand.Read(key[:]) // never returns an error: it crashes the program instead
	return key
}
