// Package peertest holds what the tests of two hosts on 127.0.0.1 share:
// matching transport configurations of a primary and a secondary.
package peertest

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/transport"
)

// secret is the shared secret of the test pair.
var secret = []byte("blockdev-test-secret-0123456789")

// Configs returns matching secondary ("b") and primary ("a") transport
// configs for a volume of size bytes with 4 KiB blocks.
func Configs(size int64) (sec, pri transport.Config) {
	base := transport.Config{
		InsecurePlaintext: true,
		Secret:            secret,
		VolumeUUID:        [16]byte{7},
		Size:              uint64(size),
		BlockSize:         4096,
		Timeout:           2 * time.Second,
	}
	sec, pri = base, base
	sec.NodeID, pri.NodeID = "b", "a"
	return sec, pri
}

// ContextUntil returns a context cancelled when stop is closed.
func ContextUntil(stop <-chan struct{}) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// FreeAddr returns a 127.0.0.1 address with a port that was free a moment
// ago, for a listener a test starts later.
func FreeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
