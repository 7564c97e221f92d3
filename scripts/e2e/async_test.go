package e2e

import (
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/node"
)

// TestAsyncDaemonJournalCatchUp runs the daemons in async mode: a short
// disconnect of the secondary is caught up by replaying the journal; a
// long one overflows the 1 MiB journal, which status reports, and the
// reconnect falls back to a bitmap resync. Both end byte-identical.
// (Write-order fidelity during the replay is checked in-process by
// blockdev's TestAsyncCatchUpKeepsWriteOrder, which can snapshot the
// secondary between two applied writes.)
func TestAsyncDaemonJournalCatchUp(t *testing.T) {
	requireE2E(t)
	a, b, creds := pairDirs(t, "64MiB")
	addr := freePort(t)
	async := []string{"--mode", "async", "--journal-size", "1MiB", "--tls-dir", creds, "--timeout", "1s"}
	secArgs := append([]string{"--role", "secondary", "--node-id", "b", "--listen", addr}, async...)
	sec := startDaemon(t, b, secArgs...)
	startDaemon(t, a, append([]string{"--role", "primary", "--node-id", "a", "--peer", addr}, async...)...)
	waitFor(t, 10*time.Second, "the primary to connect", func() bool {
		st, err := status(a)
		return err == nil && st.Link == node.LinkConnected
	})
	writeBlocks(t, a, 0, 32)
	if st := waitInSync(t, a, b); st.Mode != "async" || st.JournalCapacity != 1<<20 {
		t.Fatalf("status mode %q, journal capacity %d; want async, 1 MiB", st.Mode, st.JournalCapacity)
	}

	// Short disconnect: 64 KiB written while b is down fit the journal.
	sec.kill()
	<-sec.done
	writeBlocks(t, a, 100, 16)
	sec = startDaemon(t, b, secArgs...)
	st := waitInSync(t, a, b)
	if st.LastCatchUp != "journal" {
		t.Fatalf("after a short disconnect the catch-up was %q (%s); want journal", st.LastCatchUp, st.FallbackReason)
	}

	// Long disconnect: 4 MiB do not fit the 1 MiB journal.
	sec.kill()
	<-sec.done
	writeBlocks(t, a, 1000, 1024)
	waitFor(t, 10*time.Second, "status to report the journal overflow", func() bool {
		st, err := status(a)
		return err == nil && st.JournalOverflow && st.FallbackReason != "" && st.Replication == "logging"
	})
	t.Logf("overflow reported: %s", statusJSON(t, a).FallbackReason)
	startDaemon(t, b, secArgs...)
	st = waitInSync(t, a, b)
	if st.LastCatchUp != "bitmap" {
		t.Fatalf("after the journal overflowed the catch-up was %q; want bitmap", st.LastCatchUp)
	}
}
