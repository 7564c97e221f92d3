package ctl

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
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
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	s := &Server{srv: &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}, path: path, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		_ = s.srv.Serve(ln)
	}()
	return s, nil
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
