package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
)

// TestRaftClosedConnNotAnError: raft's errors about a connection this
// process closed (its own stop) are debug records; other errors stay
// errors.
func TestRaftClosedConnNotAnError(t *testing.T) {
	var buf bytes.Buffer
	h := newHCLogger(slog.New(slog.NewTextHandler(&buf, nil)))
	closed := &net.OpError{Op: "read", Net: "tcp", Err: net.ErrClosed}
	h.Error("failed to decode incoming command", "error", closed)
	h.Error("failed to decode incoming command", "error", fmt.Errorf("msgpack decode error [pos 12]: %s", closed.Error()))
	if buf.Len() != 0 {
		t.Errorf("a closed connection logged at info or above:\n%s", buf.String())
	}
	h.Error("failed to heartbeat to", "error", errors.New("dial tcp 10.0.0.2:7400: connect: connection refused"))
	if !strings.Contains(buf.String(), "level=ERROR") {
		t.Errorf("a refused connection was not logged as an error: %q", buf.String())
	}
}
