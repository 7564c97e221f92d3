package cluster

import (
	"context"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"strings"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// hclogger lets raft, which logs through hclog, write to the daemon's slog
// logger, so one host has one log with one format.
type hclogger struct {
	l     *slog.Logger
	name  string
	args  []any
	level *slog.LevelVar
}

func newHCLogger(l *slog.Logger) hclog.Logger {
	lv := new(slog.LevelVar)
	lv.Set(slog.LevelDebug) // the slog handler decides what is shown
	return &hclogger{l: l, level: lv}
}

func toSlog(level hclog.Level) slog.Level {
	switch level {
	case hclog.Trace, hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	}
	return slog.LevelInfo
}

func (h *hclogger) Log(level hclog.Level, msg string, args ...any) {
	lv := toSlog(level)
	switch {
	case lv != slog.LevelError:
	case closedConn(args):
		lv = slog.LevelDebug
	case peerRPC[msg]:
		lv = slog.LevelWarn
	}
	if lv < h.level.Level() || !h.l.Enabled(context.Background(), lv) {
		return
	}
	if h.name != "" {
		msg = h.name + ": " + msg
	}
	h.l.Log(context.Background(), lv, msg, append(h.args[:len(h.args):len(h.args)], args...)...)
}

// peerRPC are raft's messages of an RPC to a peer that failed: a peer that
// is down or cut off, which raft retries with backoff. They are warnings:
// nothing failed in this process, and a pair whose peer stops (or a
// witness whose data hosts stop first) would otherwise log errors on a
// clean stop. Losing quorum shows in the member's status and its own lines.
var peerRPC = map[string]bool{
	"failed to heartbeat to":                  true,
	"failed to appendEntries to":              true,
	"failed to start pipeline replication to": true,
	"failed to pipeline appendEntries":        true,
	"failed to make requestVote RPC":          true,
}

// closedConn reports whether raft's record is about a connection this
// process closed: its transport reports every read cut short by its own
// Close, or by the listener's, or by its shutdown, as an error, so that a clean stop would
// log errors. Raft's decoder may wrap the error without Unwrap: its text
// tells.
func closedConn(args []any) bool {
	for _, a := range args {
		if err, ok := a.(error); ok && (errors.Is(err, net.ErrClosed) || errors.Is(err, raft.ErrTransportShutdown) ||
			strings.Contains(err.Error(), net.ErrClosed.Error())) {
			return true
		}
	}
	return false
}

func (h *hclogger) Trace(msg string, args ...any) { h.Log(hclog.Trace, msg, args...) }
func (h *hclogger) Debug(msg string, args ...any) { h.Log(hclog.Debug, msg, args...) }
func (h *hclogger) Info(msg string, args ...any)  { h.Log(hclog.Info, msg, args...) }
func (h *hclogger) Warn(msg string, args ...any)  { h.Log(hclog.Warn, msg, args...) }
func (h *hclogger) Error(msg string, args ...any) { h.Log(hclog.Error, msg, args...) }

func (h *hclogger) enabled(level hclog.Level) bool {
	lv := toSlog(level)
	return lv >= h.level.Level() && h.l.Enabled(context.Background(), lv)
}

func (h *hclogger) IsTrace() bool { return h.enabled(hclog.Trace) }
func (h *hclogger) IsDebug() bool { return h.enabled(hclog.Debug) }
func (h *hclogger) IsInfo() bool  { return h.enabled(hclog.Info) }
func (h *hclogger) IsWarn() bool  { return h.enabled(hclog.Warn) }
func (h *hclogger) IsError() bool { return h.enabled(hclog.Error) }

func (h *hclogger) ImpliedArgs() []any { return h.args }

func (h *hclogger) With(args ...any) hclog.Logger {
	c := *h
	c.args = append(h.args[:len(h.args):len(h.args)], args...)
	return &c
}

func (h *hclogger) Name() string { return h.name }

func (h *hclogger) Named(name string) hclog.Logger {
	c := *h
	if c.name != "" {
		name = c.name + "." + name
	}
	c.name = name
	return &c
}

func (h *hclogger) ResetNamed(name string) hclog.Logger {
	c := *h
	c.name = name
	return &c
}

func (h *hclogger) SetLevel(level hclog.Level) { h.level.Set(toSlog(level)) }

func (h *hclogger) GetLevel() hclog.Level {
	switch h.level.Level() {
	case slog.LevelDebug:
		return hclog.Debug
	case slog.LevelWarn:
		return hclog.Warn
	case slog.LevelError:
		return hclog.Error
	}
	return hclog.Info
}

func (h *hclogger) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(h.StandardWriter(opts), "", 0)
}

func (h *hclogger) StandardWriter(*hclog.StandardLoggerOptions) io.Writer {
	return lineWriter{h}
}

// lineWriter turns a standard logger's lines into info records.
type lineWriter struct{ h *hclogger }

func (w lineWriter) Write(p []byte) (int, error) {
	w.h.Info(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
