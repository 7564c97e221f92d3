package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
)

// TestRaftClosedConnNotAnError: raft's errors about a connection this
// process closed (its own stop) are debug records, a peer that does not
// answer a warning; other errors stay errors.
func TestRaftClosedConnNotAnError(t *testing.T) {
	var buf bytes.Buffer
	h := newHCLogger(slog.New(slog.NewTextHandler(&buf, nil)))
	closed := &net.OpError{Op: "read", Net: "tcp", Err: net.ErrClosed}
	h.Error("failed to decode incoming command", "error", closed)
	h.Error("failed to decode incoming command", "error", fmt.Errorf("msgpack decode error [pos 12]: %s", closed.Error()))
	h.Error("failed to decode incoming command", "error", raft.ErrTransportShutdown)
	if buf.Len() != 0 {
		t.Errorf("a closed connection logged at info or above:\n%s", buf.String())
	}
	h.Error("failed to heartbeat to", "error", errors.New("dial tcp 10.0.0.2:7400: connect: connection refused"))
	if !strings.HasPrefix(buf.String(), "time=") || !strings.Contains(buf.String(), "level=WARN msg=\"failed to heartbeat to\"") {
		t.Errorf("a peer that refused a heartbeat was not logged as a warning: %q", buf.String())
	}
	buf.Reset()
	h.Error("failed to commit logs", "error", errors.New("disk full"))
	if !strings.Contains(buf.String(), "level=ERROR") {
		t.Errorf("a failed commit was not logged as an error: %q", buf.String())
	}
}
