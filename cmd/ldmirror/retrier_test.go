package main

import (
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestListenLDAPI (issue 18, defect 5): --listen ldapi://<escaped path>
// listens on that unix socket.
func TestListenLDAPI(t *testing.T) {
	dir, err := os.MkdirTemp("", "ldapi-") // short: socket paths are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "proxy.sock")
	l, err := listen("ldapi://"+url.PathEscape(sock), nil)
	if err != nil {
		t.Fatalf("listen ldapi: %v", err)
	}
	defer l.Close()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("dial %s: %v", sock, err)
	}
	c.Close()
}

// TestListenUnsupportedScheme: the message names the schemes that work.
func TestListenUnsupportedScheme(t *testing.T) {
	_, err := listen("cldap://127.0.0.1:389", nil)
	if err == nil || !strings.Contains(err.Error(), "ldap://, ldaps:// or ldapi://") {
		t.Fatalf("err = %v, want one naming ldap://, ldaps:// or ldapi://", err)
	}
}

// TestListenLDAPIStaleSocket: a socket file left by a proxy that died is
// replaced; one that a running process answers on is refused.
func TestListenLDAPIStaleSocket(t *testing.T) {
	dir, err := os.MkdirTemp("", "ldapi-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "s")
	u := "ldapi://" + url.PathEscape(sock)
	old, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := listen(u, nil); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("listen on a socket in use: %v, want an error saying so", err)
	}
	old.SetUnlinkOnClose(false)
	old.Close() // the file stays, as after a crash
	l, err := listen(u, nil)
	if err != nil {
		t.Fatalf("listen over a stale socket: %v", err)
	}
	l.Close()
}
