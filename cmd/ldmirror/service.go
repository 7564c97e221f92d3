package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/ldmirror/ldmirror/ctl"
	"github.com/ldmirror/ldmirror/internal/sdnotify"
)

// service runs the daemon or the witness as a service: SIGTERM and SIGINT
// (or `ldmirror down`) stop it, SIGHUP (or `ldmirror adjust`) reloads it,
// and systemd hears how it is: READY=1 once it serves, a STATUS= line
// when its state changes, WATCHDOG=1 while it answers, STOPPING=1
// (docs/operations.md, "Running under systemd").
type service struct {
	log    *slog.Logger
	notify *sdnotify.Notifier
	// state says whether the process serves, and one line about it.
	state    func() (ready bool, status string)
	reloadFn func() ctl.Reload

	ctx      context.Context // ends when the process is to stop
	stop     context.CancelFunc
	reloadMu sync.Mutex // one reload at a time
	sigs     chan os.Signal
	quit     chan struct{} // closed by Close
	done     chan struct{} // closed when the loop ended
}

// serviceState polls while the process is not ready yet, and then.
const (
	startingPoll = 100 * time.Millisecond
	runningPoll  = time.Second
)

// startService takes over SIGTERM, SIGINT and SIGHUP. Call it first: until
// then SIGHUP would end the process. Its state and reload are set by
// serve, once there is something to report.
func startService(log *slog.Logger) *service {
	s := &service{log: log, notify: sdnotify.FromEnv(), sigs: make(chan os.Signal, 4),
		quit: make(chan struct{}), done: make(chan struct{})}
	s.ctx, s.stop = context.WithCancel(context.Background())
	signal.Notify(s.sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	return s
}

// serve starts reporting state to systemd and serving reloads.
func (s *service) serve(state func() (bool, string), reload func() ctl.Reload) {
	s.state, s.reloadFn = state, reload
	go s.loop()
}

// Done is closed when the process is to stop.
func (s *service) Done() <-chan struct{} { return s.ctx.Done() }

// Stop asks the process to stop, as SIGTERM does.
func (s *service) Stop() {
	if s.ctx.Err() == nil {
		s.log.Info("stopping")
		if err := s.notify.Send(sdnotify.Stopping); err != nil {
			s.log.Warn("systemd not told", "err", err)
		}
	}
	s.stop()
}

// Reload applies what may change while the process runs, as SIGHUP does.
func (s *service) Reload() ctl.Reload {
	s.reloadMu.Lock()
	defer s.reloadMu.Unlock()
	if s.reloadFn == nil {
		return ctl.Reload{Errors: []string{"not started yet: nothing to reload"}}
	}
	_ = s.notify.Send("RELOADING=1")
	r := s.reloadFn()
	_ = s.notify.Send(sdnotify.Ready)
	return r
}

func (s *service) loop() {
	defer close(s.done)
	ready, last := false, ""
	watchdog := s.notify.WatchdogEvery()
	var lastPing time.Time
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-s.quit:
			return
		case sig := <-s.sigs:
			if sig == syscall.SIGHUP {
				s.log.Info("SIGHUP: reloading")
				s.Reload()
			} else {
				s.log.Info("signal received", "signal", sig.String())
				s.Stop()
			}
			continue
		case <-t.C:
		}
		ok, status := s.state() // blocks if the process hangs: then no WATCHDOG=1
		var msgs []string
		if ok && !ready {
			ready = true
			msgs = append(msgs, sdnotify.Ready)
			s.log.Info("serving", "status", status)
		}
		if status != last {
			last = status
			msgs = append(msgs, sdnotify.Status(status))
		}
		if watchdog > 0 && time.Since(lastPing) >= watchdog {
			lastPing = time.Now()
			msgs = append(msgs, sdnotify.Watchdog)
		}
		if len(msgs) > 0 && s.ctx.Err() == nil {
			if err := s.notify.Send(msgs...); err != nil {
				s.log.Warn("systemd not told", "err", err)
			}
		}
		next := runningPoll
		if !ready {
			next = startingPoll
		}
		if watchdog > 0 {
			next = min(next, watchdog)
		}
		t.Reset(next)
	}
}

// Close stops handling signals (SIGHUP is then ignored rather than fatal
// until the process exits) and waits for the loop.
func (s *service) Close() {
	signal.Ignore(syscall.SIGHUP)
	signal.Stop(s.sigs)
	close(s.quit)
	if s.state != nil {
		<-s.done
	}
	s.stop()
}
