package slapdtest

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
)

// Log is a slog.Handler that records every record (message and attributes,
// all levels), so tests can wait for an event such as a failover or check a
// logged reason. The zero value is ready to use.
type Log struct {
	mu    sync.Mutex
	lines []string
}

// Enabled implements slog.Handler.
func (l *Log) Enabled(context.Context, slog.Level) bool { return true }

// Handle implements slog.Handler.
func (l *Log) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	l.mu.Lock()
	l.lines = append(l.lines, b.String())
	l.mu.Unlock()
	return nil
}

// WithAttrs implements slog.Handler.
func (l *Log) WithAttrs(as []slog.Attr) slog.Handler { return &logWith{l, as} }

// WithGroup implements slog.Handler; groups are flattened.
func (l *Log) WithGroup(string) slog.Handler { return l }

type logWith struct {
	*Log
	as []slog.Attr
}

func (w *logWith) Handle(ctx context.Context, r slog.Record) error {
	r.AddAttrs(w.as...)
	return w.Log.Handle(ctx, r)
}

// Count returns how many records contain every one of subs.
func (l *Log) Count(subs ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
next:
	for _, line := range l.lines {
		for _, s := range subs {
			if !strings.Contains(line, s) {
				continue next
			}
		}
		n++
	}
	return n
}
