package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"time"
)

// controlServer serves the node's state on a unix socket (HTTP + JSON), the
// interface of `ldmirror status` and later commands.
type controlServer struct {
	srv  *http.Server
	ln   net.Listener
	path string
	done chan struct{}
}

func listenControl(path string, n *Node) (*controlServer, error) {
	// A socket left by a daemon that was killed is removed; a live one is not.
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("control socket %s is in use: is another daemon running on this volume?", path)
	}
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(n.Status())
	})
	c := &controlServer{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, ln: ln, path: path, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		_ = c.srv.Serve(ln)
	}()
	return c, nil
}

func (c *controlServer) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := c.srv.Shutdown(ctx)
	<-c.done
	_ = os.Remove(c.path)
	return err
}

// ErrNoDaemon reports that no daemon answers on the control socket.
var ErrNoDaemon = errors.New("no ldmirror daemon answers")

// FetchStatus asks the daemon behind the control socket at path for its status.
func FetchStatus(ctx context.Context, path string) (Status, error) {
	var st Status
	client := http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://ldmirror/status", nil)
	if err != nil {
		return st, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return st, fmt.Errorf("%w on %s: %w", ErrNoDaemon, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("control socket %s: %s", path, resp.Status)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}
