package blockdev

import (
	"context"
	"time"

	"github.com/ldmirror/ldmirror/transport"
)

var testSecret = []byte("blockdev-test-secret-0123456789")

// testConfigs returns matching secondary and primary transport configs for
// a volume of volSize bytes.
func testConfigs() (sec, pri transport.Config) { return testConfigsSized(volSize) }

// testConfigsSized is testConfigs for a volume of size bytes.
func testConfigsSized(size int64) (sec, pri transport.Config) {
	base := transport.Config{
		InsecurePlaintext: true,
		Secret:            testSecret,
		VolumeUUID:        [16]byte{7},
		Size:              uint64(size),
		BlockSize:         4096,
		Timeout:           2 * time.Second,
	}
	sec, pri = base, base
	sec.NodeID, pri.NodeID = "b", "a"
	return sec, pri
}

// contextUntil returns a context cancelled when stop is closed.
func contextUntil(stop <-chan struct{}) (context.Context, context.CancelFunc) {
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
