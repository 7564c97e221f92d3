package ctl

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/ldmirror/ldmirror/events"
	"github.com/ldmirror/ldmirror/node"
)

type fakeProcess struct{ stopped chan struct{} }

func (p *fakeProcess) Stop() { close(p.stopped) }
func (p *fakeProcess) Reload() Reload {
	return Reload{Applied: []string{"log-level info -> debug"}, NotApplied: []string{"window"}}
}

// TestProcessRoutes: stop, reload, attach and the event stream, with the
// stream ending when the feed closes.
func TestProcessRoutes(t *testing.T) {
	p := &fakeProcess{stopped: make(chan struct{})}
	feed := events.NewFeed(func() node.Status { return node.Status{Node: "a"} }, time.Millisecond)
	path := filepath.Join(t.TempDir(), "control.sock")
	s, err := Serve(path, Handler(Routes{Host: &fakeHost{}, Process: p, Events: feed}))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cl := NewClient(path)
	ctx := context.Background()
	if r, err := cl.Reload(ctx); err != nil || len(r.Applied) != 1 || r.NotApplied[0] != "window" {
		t.Fatalf("Reload = %+v, %v", r, err)
	}
	if dev, err := cl.Attach(ctx); err != nil || dev != "/dev/loop7" {
		t.Fatalf("Attach = %q, %v", dev, err)
	}
	var got []string
	if err := cl.Events(ctx, true, 0, func(e events.Event) error { got = append(got, e.Kind); return nil }); err != nil || len(got) != 1 || got[0] != events.KindExists {
		t.Fatalf("Events --now: %v, %v", got, err)
	}
	got = nil
	done := make(chan error, 1)
	go func() {
		done <- cl.Events(ctx, false, 0, func(e events.Event) error {
			got = append(got, e.Kind)
			if e.Kind == events.KindExists {
				go feed.Close()
			}
			return nil
		})
	}()
	if err := <-done; err != nil || len(got) != 2 || got[1] != events.KindStopping {
		t.Fatalf("Events until the feed closed: %v, %v", got, err)
	}
	if err := cl.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	<-p.stopped
}
