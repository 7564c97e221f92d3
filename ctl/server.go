package ctl

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// Server serves a handler on a unix socket.
type Server struct {
	srv  *http.Server
	path string
	done chan struct{}
}

// Serve serves h on the unix socket at path (mode 0600). A socket left by
// a process that was killed is replaced; a live one is not.
func Serve(path string, h http.Handler) (*Server, error) {
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return nil, fmt.Errorf("control socket %s is in use: is another ldmirror process running on this directory?", path)
	}
	_ = os.Remove(path)
	ln, err := listenPrivate(path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	s := &Server{srv: &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}, path: path, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(ln)
	}()
	return s, nil
}

// listenPrivate listens on a unix socket at path that no one but its owner
// can ever connect to. bind(2) creates the socket with the umask's mode,
// and a chmod after it leaves a window in which another user may connect;
// so the socket is bound in a new directory of mode 0700 next to path,
// narrowed to 0600 there, and only then renamed into place. The umask is
// process-wide and not touched.
func listenPrivate(path string) (net.Listener, error) {
	dir, err := os.MkdirTemp(filepath.Dir(path), ".ctl-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, err
	}
	// Close must not remove the temporary name (gone) or path (Close's).
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// Close stops accepting requests, waits up to 2 s for those in flight and
// removes the socket.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	<-s.done
	_ = os.Remove(s.path)
	return err
}
