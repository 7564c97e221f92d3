package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/ldapagent/agent"
	"github.com/ldmirror/ldmirror/mirror"
	"github.com/ldmirror/ldmirror/node"
)

// Metrics is one data host's metrics. It is a node.Observer: the node
// tells it each write's and each peer ack's latency.
type Metrics struct {
	reg        *prometheus.Registry
	write, ack prometheus.Histogram
}

// latencyBuckets go from 50 µs to 3.3 s, doubling.
var latencyBuckets = prometheus.ExponentialBuckets(50e-6, 2, 17)

// New makes the metrics of the host whose status status returns (asked at
// each scrape), built as version says.
func New(status func() node.Status, version string) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		write: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ldmirror_write_duration_seconds",
			Help:    "Time an application write through the primary's export took, until acknowledged (by the peer too in sync mode).",
			Buckets: latencyBuckets,
		}),
		ack: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ldmirror_peer_ack_duration_seconds",
			Help:    "Time from shipping a write to the peer to its acknowledgement.",
			Buckets: latencyBuckets,
		}),
	}
	m.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.write, m.ack,
		&statusCollector{status: status, version: version},
	)
	return m
}

// ObserveWrite records an application write's latency.
func (m *Metrics) ObserveWrite(d time.Duration) { m.write.Observe(d.Seconds()) }

// ObservePeerAck records a peer ack's latency.
func (m *Metrics) ObservePeerAck(d time.Duration) { m.ack.Observe(d.Seconds()) }

// Handler serves the metrics in Prometheus's text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Server serves metrics on a TCP address until Close.
type Server struct {
	srv  *http.Server
	addr net.Addr
	done chan struct{}
}

// Serve serves h at /metrics on addr (host:port).
func Serve(addr string, h http.Handler, log *slog.Logger) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h)
	s := &Server{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, addr: ln.Addr(), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	log.Info("serving metrics", "url", "http://"+ln.Addr().String()+"/metrics")
	return s, nil
}

// Addr is the address served.
func (s *Server) Addr() net.Addr { return s.addr }

// Close stops serving, waiting up to 2 s for scrapes in flight.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	<-s.done
	return err
}

// The states each state-set series has, one series each, 1 for the
// current one (Prometheus's enum convention).
var (
	roles      = []string{"primary", "secondary"}
	links      = []string{string(node.LinkConnected), string(node.LinkConnecting), string(node.LinkDisconnected), string(node.LinkStandalone)}
	diskStates = []string{string(cluster.DiskUpToDate), string(cluster.DiskOutdated), string(cluster.DiskInconsistent),
		string(cluster.DiskDiskless), string(cluster.DiskFailed)}
	replications = map[mirror.State]string{
		mirror.StateReplicating:      "replicating",
		mirror.StateLogging:          "logging",
		mirror.StateCatchUp:          "journal-catchup",
		mirror.StateResyncing:        "resyncing",
		node.ReplicationResyncTarget: "resync-target",
		node.ReplicationSuspended:    "suspended",
		node.ReplicationFenced:       "fenced",
		node.ReplicationNoPrimary:    "waiting-for-primary",
		node.ReplicationNoTerm:       "waiting-for-control-plane",
		node.ReplicationNone:         "none",
	}
	// replicationLabels are the labels of replications, sorted.
	replicationLabels = func() []string {
		var l []string
		for _, s := range replications {
			l = append(l, s)
		}
		slices.Sort(l)
		return l
	}()
	agentStates = []string{agent.StateStarting, agent.StateSecondaryWatching, agent.StateFailingOver, agent.StatePromoting,
		agent.StatePrimaryServing, agent.StateDemoting, agent.StateSwapping, agent.StateFailed, agent.StateStopped}
)
