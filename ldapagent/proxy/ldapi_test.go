package proxy

import (
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ldmirror/ldmirror/internal/slapdtest"
)

// TestListenLDAPI: clients on a unix socket bind with a DN and password;
// SASL EXTERNAL is refused with a message saying why (docs/retrier.md).
func TestListenLDAPI(t *testing.T) {
	skipWithoutTools(t)
	a := slapdtest.Start(t, slapdtest.Options{})
	dir, err := os.MkdirTemp("", "proxy-") // socket paths are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "ldapi")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	serveOn(t, Config{Backend: backend(a, nil)}, l)
	u := "ldapi://" + url.PathEscape(sock)
	if out, code := tool(t, "", "ldapwhoami", admin(u, a)...); code != 0 {
		t.Fatalf("simple bind over ldapi: exit %d: %s", code, out)
	}
	out, code := tool(t, "", "ldapwhoami", "-Y", "EXTERNAL", "-H", u)
	if code != 7 || !strings.Contains(out, "SASL EXTERNAL is not relayed") {
		t.Fatalf("SASL EXTERNAL over ldapi: exit %d, want 7 (authMethodNotSupported) with the reason:\n%s", code, out)
	}
}
