package probe

import (
	"context"
	"sync"
	"time"
)

// Health is a Monitor's view of the server.
type Health struct {
	// Up is false once Threshold probes in a row failed, and true again
	// after one success. Before the first probe ends it is false.
	Up bool
	// Known is false until the first probe ended.
	Known               bool
	ConsecutiveFailures int
	Probes              uint64
	LastSuccess         time.Time
	LastError           string
	LastLatency         time.Duration
}

// Monitor probes a server at an interval until Close.
type Monitor struct {
	cfg      Config
	onChange func(Health)

	mu       sync.Mutex
	health   Health
	reported bool // whether onChange was called yet; then health.Up was reported

	cancel context.CancelFunc
	done   chan struct{}
}

// Start begins probing. onChange, if not nil, is called (from the
// Monitor's goroutine) whenever Up changes, the first time included.
func Start(cfg Config, onChange func(Health)) *Monitor {
	ctx, cancel := context.WithCancel(context.Background())
	m := &Monitor{cfg: cfg.withDefaults(), onChange: onChange, cancel: cancel, done: make(chan struct{})}
	go m.run(ctx)
	return m
}

// Health returns the current view.
func (m *Monitor) Health() Health {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.health
}

// Close stops probing and waits for a probe in progress.
func (m *Monitor) Close() {
	m.cancel()
	<-m.done
}

func (m *Monitor) run(ctx context.Context) {
	defer close(m.done)
	t := time.NewTicker(m.cfg.Interval)
	defer t.Stop()
	for {
		m.record(Check(ctx, m.cfg))
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Record folds one probe result into h: down after threshold failures in
// a row, up again after one success.
func (h *Health) Record(r Result, threshold int) {
	h.Known = true
	h.Probes++
	h.LastLatency = r.Latency
	if r.Err == nil {
		h.ConsecutiveFailures = 0
		h.LastSuccess = r.At
		h.Up = true
		return
	}
	h.ConsecutiveFailures++
	h.LastError = r.Err.Error()
	if h.ConsecutiveFailures >= threshold {
		h.Up = false
	}
}

// record folds one result into the health and reports a change of Up.
func (m *Monitor) record(r Result) {
	m.mu.Lock()
	h := &m.health
	wasUp := h.Up
	h.Record(r, m.cfg.Threshold)
	// Report the first verdict (up, or down after Threshold failures) and
	// every change after it.
	decided := h.Up || h.ConsecutiveFailures >= m.cfg.Threshold
	report := decided && (!m.reported || wasUp != h.Up)
	if report {
		m.reported = true
	}
	snapshot := *h
	m.mu.Unlock()
	if report && m.onChange != nil {
		m.onChange(snapshot)
	}
}
