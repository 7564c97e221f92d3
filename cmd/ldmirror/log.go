package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"

	"github.com/urfave/cli/v2"
)

// logFlags are the log flags of the daemon and the witness.
func logFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "log-level", Usage: "`LEVEL`: debug, info, warn or error (SIGHUP applies a new one from the resource file)", Value: "info"},
		&cli.StringFlag{Name: "log-format", Usage: "`FORMAT`: text (key=value; under journald without the time, with the priority) or json", Value: "text"},
	}
}

// componentKey names the part of the process a log line comes from:
// daemon, node, cluster, agent, metrics, witness.
const componentKey = "component"

// logs is a process's logger and its level, which a reload may change.
type logs struct {
	*slog.Logger
	level *slog.LevelVar
}

// newLogs is the logger c's --log-level and --log-format ask for, on
// stderr.
func newLogs(c *cli.Context) (logs, error) {
	l := logs{level: new(slog.LevelVar)}
	if err := l.level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return l, fmt.Errorf("--log-level: %w", err)
	}
	h, err := logHandler(os.Stderr, c.String("log-format"), l.level, os.Getenv("JOURNAL_STREAM") != "")
	if err != nil {
		return l, err
	}
	l.Logger = slog.New(h)
	return l, nil
}

// logHandler writes to w in format at level; journal says w is journald's
// stream (systemd sets JOURNAL_STREAM): text lines then start with their
// syslog priority, "<3>" for an error, and leave the time to the journal.
func logHandler(w io.Writer, format string, level slog.Leveler, journal bool) (slog.Handler, error) {
	opts := &slog.HandlerOptions{Level: level}
	switch format {
	case "json":
		return slog.NewJSONHandler(w, opts), nil
	case "text":
	default:
		return nil, fmt.Errorf("--log-format %q: want text or json", format)
	}
	if !journal {
		return slog.NewTextHandler(w, opts), nil
	}
	opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
		if len(groups) == 0 && a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}
	j := &journalHandler{out: w, mu: new(sync.Mutex), buf: new(bytes.Buffer)}
	j.inner = slog.NewTextHandler(j.buf, opts)
	return j, nil
}

// journalHandler prefixes each text line with its syslog priority
// (sd-daemon(3)), so that journald records the level.
type journalHandler struct {
	out   io.Writer
	mu    *sync.Mutex   // guards buf, shared by the handlers WithAttrs makes
	buf   *bytes.Buffer // inner writes one record here
	inner slog.Handler
}

func (j *journalHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return j.inner.Enabled(ctx, l)
}

func (j *journalHandler) Handle(ctx context.Context, r slog.Record) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.buf.Reset()
	switch {
	case r.Level >= slog.LevelError:
		j.buf.WriteString("<3>")
	case r.Level >= slog.LevelWarn:
		j.buf.WriteString("<4>")
	case r.Level >= slog.LevelInfo:
		j.buf.WriteString("<6>")
	default:
		j.buf.WriteString("<7>")
	}
	if err := j.inner.Handle(ctx, r); err != nil {
		return err
	}
	_, err := j.out.Write(j.buf.Bytes())
	return err
}

func (j *journalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *j
	c.inner = j.inner.WithAttrs(as)
	return &c
}

func (j *journalHandler) WithGroup(name string) slog.Handler {
	c := *j
	c.inner = j.inner.WithGroup(name)
	return &c
}
