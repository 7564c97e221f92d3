package retrier

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
	"github.com/ldmirror/ldmirror/internal/slapdtest"
)

// events is a slog.Handler that counts records by message, so tests can
// wait for "the retrier has failed over" instead of sleeping.
type events struct {
	mu     sync.Mutex
	counts map[string]int
	next   slog.Handler
}

func newEvents() *events {
	return &events{counts: map[string]int{}, next: slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})}
}

func (e *events) Enabled(context.Context, slog.Level) bool { return true }
func (e *events) Handle(ctx context.Context, r slog.Record) error {
	e.mu.Lock()
	e.counts[r.Message]++
	e.mu.Unlock()
	if e.next.Enabled(ctx, r.Level) {
		return e.next.Handle(ctx, r)
	}
	return nil
}
func (e *events) WithAttrs([]slog.Attr) slog.Handler { return e }
func (e *events) WithGroup(string) slog.Handler      { return e }

func (e *events) count(msg string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.counts[msg]
}

// waitFor polls cond until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond) // polling interval of a condition wait
	}
}

func person(dn, cn, sn string, extra ...string) *ldap.AddRequest {
	r := ldap.NewAddRequest(dn, nil)
	r.Attribute("objectClass", []string{"inetOrgPerson"})
	r.Attribute("cn", []string{cn})
	r.Attribute("sn", []string{sn})
	for i := 0; i+1 < len(extra); i += 2 {
		r.Attribute(extra[i], []string{extra[i+1]})
	}
	return r
}

func openSession(t testing.TB, cfg Config) *Session {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := Open(ctx, cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// entry reads dn from srv directly (not through the retrier).
func entry(t testing.TB, srv *slapdtest.Server, dn string) (*ldap.Entry, error) {
	t.Helper()
	c, err := srv.Dial()
	if err != nil {
		t.Fatalf("dial %s: %v", srv.URL, err)
	}
	defer c.Close()
	return readEntry(c, dn)
}

// attrs renders an entry's attributes as "name=v1|v2" lines, sorted, names
// lower-cased, for comparisons.
func attrs(e *ldap.Entry) string {
	var lines []string
	for _, a := range e.Attributes {
		lines = append(lines, fmt.Sprintf("%s=%s", strings.ToLower(a.Name), strings.Join(a.Values, "|")))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}
