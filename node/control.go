package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/ldmirror/ldmirror/ldapagent/agent"
)

// ControlSocket serves an HTTP handler on a unix socket (mode 0600): the
// interface between a running ldmirror process and the CLI.
type ControlSocket struct {
	srv  *http.Server
	path string
	done chan struct{}
}

// ServeControl serves h on the unix socket at path. A socket left by a
// process that was killed is replaced; a live one is not.
func ServeControl(path string, h http.Handler) (*ControlSocket, error) {
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("control socket %s is in use: is another ldmirror process running on this directory?", path)
	}
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	c := &ControlSocket{srv: &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}, path: path, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		_ = c.srv.Serve(ln)
	}()
	return c, nil
}

// Close stops accepting requests, waits up to 2 s for those in flight and
// removes the socket.
func (c *ControlSocket) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := c.srv.Shutdown(ctx)
	<-c.done
	_ = os.Remove(c.path)
	return err
}

// listenControl serves the node's state and commands (`ldmirror status`,
// `verify`) on its control socket.
func listenControl(path string, n *Node) (*ControlSocket, error) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(n.Status())
	})
	mux.HandleFunc("POST /verify", func(w http.ResponseWriter, r *http.Request) {
		res, err := n.Verify(r.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(res)
	})
	mux.HandleFunc("POST /resync", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		res, err := n.Resync(r.Context(), q.Get("full") == "1", q.Get("checksum") == "1")
		if err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(res)
	})
	mux.HandleFunc("POST /swap", func(w http.ResponseWriter, r *http.Request) {
		epoch, err := n.swap(r.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(SwapResult{Epoch: uint64(epoch)})
	})
	mux.HandleFunc("POST /agent/retry", func(w http.ResponseWriter, r *http.Request) {
		if n.agent == nil {
			http.Error(w, "no LDAP agent runs on this host (daemon --agent-config)", http.StatusConflict)
			return
		}
		if err := n.agent.Retry(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(n.agent.Status())
	})
	if n.cfg.ControlRoutes != nil {
		mux.Handle("/cluster", n.cfg.ControlRoutes)
		mux.Handle("/cluster/", n.cfg.ControlRoutes)
	}
	return ServeControl(path, mux)
}

// ErrNoDaemon reports that no daemon answers on the control socket.
var ErrNoDaemon = errors.New("no ldmirror daemon answers")

// FetchStatus asks the daemon behind the control socket at path for its status.
func FetchStatus(ctx context.Context, path string) (Status, error) {
	var st Status
	return st, call(ctx, path, http.MethodGet, "/status", &st)
}

// RequestResync asks the daemon behind the control socket at path to resync
// now (see Node.Resync); it returns when the resync ended.
func RequestResync(ctx context.Context, path string, full, checksum bool) (ResyncResult, error) {
	var res ResyncResult
	q := url.Values{}
	if full {
		q.Set("full", "1")
	}
	if checksum {
		q.Set("checksum", "1")
	}
	return res, call(ctx, path, http.MethodPost, "/resync?"+q.Encode(), &res)
}

// RequestVerify asks the daemon behind the control socket at path to verify
// the volume against its peer; it returns when the verify (and the resync of
// what differs) ended.
func RequestVerify(ctx context.Context, path string) (VerifyResult, error) {
	var res VerifyResult
	return res, call(ctx, path, http.MethodPost, "/verify", &res)
}

// SwapResult is what `ldmirror swap` reports.
type SwapResult struct {
	Epoch uint64 `json:"epoch"` // the epoch the peer is primary in
}

// RequestSwap asks the primary behind the control socket at path to hand
// the primary role to its peer (see Node.Swap).
func RequestSwap(ctx context.Context, path string) (SwapResult, error) {
	var res SwapResult
	return res, call(ctx, path, http.MethodPost, "/swap", &res)
}

// RequestAgentRetry asks the agent behind the control socket at path to
// run again the hook sequence that failed; it returns the agent's state.
func RequestAgentRetry(ctx context.Context, path string) (agent.Status, error) {
	var st agent.Status
	return st, call(ctx, path, http.MethodPost, "/agent/retry", &st)
}

func call(ctx context.Context, path, method, endpoint string, out any) error {
	client := http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
	req, err := http.NewRequestWithContext(ctx, method, "http://ldmirror"+endpoint, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("%w on %s: %w", ErrNoDaemon, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		name, _, _ := strings.Cut(endpoint[1:], "?")
		return fmt.Errorf("%s: %s", name, strings.TrimSpace(string(msg)))
	}
	return json.NewDecoder(resp.Body).Decode(out)
}
