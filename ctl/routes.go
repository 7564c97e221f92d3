package ctl

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/events"
	"github.com/ldmirror/ldmirror/ldapagent/agent"
	"github.com/ldmirror/ldmirror/node"
)

// DefaultTimeout bounds a control-plane command when the request names
// none: how long the member may try to commit before it reports no quorum.
const DefaultTimeout = 10 * time.Second

// Host is the data host behind a control socket (*node.Node).
type Host interface {
	Status() node.Status
	Verify(ctx context.Context) (node.VerifyResult, error)
	Resync(ctx context.Context, full, checksum bool) (node.ResyncResult, error)
	// RequestSwap hands the primary role to the peer, through the LDAP
	// agent when one runs (it stops the directory service first); without
	// one it is refused while the volume is in use here, unless force.
	RequestSwap(ctx context.Context, force bool) (cluster.Epoch, error)
	// CheckDemote refuses to demote node if it is this host and its
	// volume is in use, unless force.
	CheckDemote(node string, force bool) error
	RetryAgent(ctx context.Context) (agent.Status, error)
	// AttachDisk takes back a disk that failed, once repaired; full has
	// the primary resync every block (a replaced disk).
	AttachDisk(ctx context.Context, full bool) error
	// AbortResync discards the resync this host, a resync's target,
	// staged, its source being gone.
	AbortResync(ctx context.Context) (node.AbortResult, error)
	// CheckPromote refuses to promote node if it is this host and it
	// applies a completed resync; for a forced promotion it says what is
	// lost.
	CheckPromote(node string, force bool) (string, error)
	// Attach binds the primary's export to a loop device and returns it.
	Attach() (string, error)
}

// Process is the ldmirror process behind a socket: a daemon or a witness.
type Process interface {
	// Stop makes it stop, as SIGTERM does, and returns at once.
	Stop()
	// Reload applies what changed in its resource file and re-reads its
	// certificate, as SIGHUP does.
	Reload() Reload
}

// Reload is what a reload did: each item names a setting ("resync-rate
// 16MiB -> 64MiB", "certificate").
type Reload struct {
	Applied []string `json:"applied"`
	// NotApplied changed but takes a restart; Errors could not be read
	// (the process keeps what it had).
	NotApplied []string `json:"not_applied,omitempty"`
	Errors     []string `json:"errors,omitempty"`
}

// Events is a data host's stream of state changes (*events.Feed).
type Events interface {
	Follow(ctx context.Context, now bool, progress time.Duration, emit func(events.Event) error) error
}

// Routes are what a socket serves; nil parts serve no routes.
type Routes struct {
	Host    Host
	Member  Member
	Process Process
	Events  Events
}

// Member is the control-plane member behind a control socket
// (*cluster.Cluster).
type Member interface {
	Status() cluster.Status
	Consistent(ctx context.Context) (cluster.VolumeState, error)
	Members(ctx context.Context) ([]cluster.Member, error)
	Bootstrap(ctx context.Context) error
	Join(ctx context.Context, addr string) error
	Remove(ctx context.Context, id string) error
	Promote(ctx context.Context, node string, force bool, reason string) (cluster.Epoch, error)
	Demote(ctx context.Context, node string, epoch cluster.Epoch) (cluster.Epoch, error)
}

// Handler serves the routes of r's parts.
func Handler(r Routes) http.Handler {
	h, m := r.Host, r.Member
	if h == nil {
		h = noHost{}
	}
	mux := http.NewServeMux()
	if p := r.Process; p != nil {
		mux.HandleFunc("POST /stop", func(w http.ResponseWriter, _ *http.Request) {
			p.Stop()
			writeJSON(w, struct{}{})
		})
		mux.HandleFunc("POST /reload", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, p.Reload()) })
	}
	if ev := r.Events; ev != nil {
		mux.HandleFunc("GET /events", func(w http.ResponseWriter, r *http.Request) { serveEvents(w, r, ev) })
	}
	if _, none := h.(noHost); !none {
		mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, h.Status()) })
		mux.HandleFunc("POST /verify", func(w http.ResponseWriter, r *http.Request) {
			res, err := h.Verify(r.Context())
			respond(w, res, err)
		})
		mux.HandleFunc("POST /resync", func(w http.ResponseWriter, r *http.Request) {
			q := r.URL.Query()
			if q.Get("abort") == "1" {
				res, err := h.AbortResync(r.Context())
				respond(w, res, err)
				return
			}
			res, err := h.Resync(r.Context(), q.Get("full") == "1", q.Get("checksum") == "1")
			respond(w, res, err)
		})
		mux.HandleFunc("POST /swap", func(w http.ResponseWriter, r *http.Request) {
			e, err := h.RequestSwap(r.Context(), r.URL.Query().Get("force") == "1")
			respond(w, SwapResult{Epoch: uint64(e)}, err)
		})
		mux.HandleFunc("POST /attach-disk", func(w http.ResponseWriter, r *http.Request) {
			respond(w, struct{}{}, h.AttachDisk(r.Context(), r.URL.Query().Get("full") == "1"))
		})
		mux.HandleFunc("POST /agent/retry", func(w http.ResponseWriter, r *http.Request) {
			st, err := h.RetryAgent(r.Context())
			respond(w, st, err)
		})
		mux.HandleFunc("POST /attach", func(w http.ResponseWriter, r *http.Request) {
			dev, err := h.Attach()
			respond(w, AttachResult{Device: dev}, err)
		})
	}
	if m != nil {
		mux.HandleFunc("GET /cluster", func(w http.ResponseWriter, r *http.Request) { serveClusterStatus(w, r, m) })
		mux.HandleFunc("POST /cluster/bootstrap", command(func(ctx context.Context, _ Request) (Reply, error) {
			return Reply{}, m.Bootstrap(ctx)
		}))
		mux.HandleFunc("POST /cluster/join", command(func(ctx context.Context, r Request) (Reply, error) {
			if r.Addr == "" {
				return Reply{}, fmt.Errorf("%w: say which member to join through (host:port)", cluster.ErrInvalidCommand)
			}
			return Reply{}, m.Join(ctx, r.Addr)
		}))
		mux.HandleFunc("POST /cluster/remove", command(func(ctx context.Context, r Request) (Reply, error) {
			return Reply{}, m.Remove(ctx, r.Node)
		}))
		mux.HandleFunc("POST /cluster/promote", command(func(ctx context.Context, r Request) (Reply, error) {
			if r.Force && strings.TrimSpace(r.Reason) == "" {
				return Reply{}, fmt.Errorf("%w: --force needs --reason", cluster.ErrInvalidCommand)
			}
			note, err := h.CheckPromote(r.Node, r.Force)
			if err != nil {
				return Reply{}, err
			}
			e, err := m.Promote(ctx, r.Node, r.Force, r.Reason)
			return Reply{Epoch: e, Primary: r.Node, Note: note}, err
		}))
		mux.HandleFunc("POST /cluster/demote", command(func(ctx context.Context, r Request) (Reply, error) {
			if err := h.CheckDemote(r.Node, r.Force); err != nil {
				return Reply{}, err
			}
			epoch := r.Epoch
			if epoch == 0 {
				s, err := m.Consistent(ctx)
				if err != nil {
					return Reply{}, err
				}
				epoch = s.Epoch
			}
			e, err := m.Demote(ctx, r.Node, epoch)
			return Reply{Epoch: e}, err
		}))
	}
	return mux
}

// AttachResult is what `ldmirror attach` reports.
type AttachResult struct {
	Device string `json:"device"`
}

// serveEvents streams the host's events, one JSON object a line, flushed
// as they come: ?now=1 ends after the state, ?progress_ms=N sets how
// often a running resync reports.
func serveEvents(w http.ResponseWriter, r *http.Request, ev Events) {
	q := r.URL.Query()
	ms, _ := strconv.ParseInt(q.Get("progress_ms"), 10, 64)
	w.Header().Set("Content-Type", "application/x-ndjson")
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	_ = ev.Follow(r.Context(), q.Get("now") == "1", time.Duration(ms)*time.Millisecond, func(e events.Event) error {
		if err := enc.Encode(e); err != nil {
			return err
		}
		return rc.Flush()
	})
}

// SwapResult is what `ldmirror swap` reports.
type SwapResult struct {
	Epoch uint64 `json:"epoch"` // the epoch the peer is primary in
}

// ClusterView is GET /cluster: the member's status and the raft voters.
type ClusterView struct {
	cluster.Status
	Members []cluster.Member `json:"members"`
	// MembersError says why Members is missing.
	MembersError string `json:"members_error,omitempty"`
	// Consistent is set when Volume was read through the leader.
	Consistent bool `json:"consistent,omitempty"`
}

// Request is the body of a POST to a /cluster route.
type Request struct {
	Node   string        `json:"node,omitempty"`
	Addr   string        `json:"addr,omitempty"`
	Force  bool          `json:"force,omitempty"`
	Reason string        `json:"reason,omitempty"`
	Epoch  cluster.Epoch `json:"epoch,omitempty"`
	// TimeoutMS bounds the command; default DefaultTimeout.
	TimeoutMS int64 `json:"timeout_ms,omitempty"`
}

// Reply is the answer of a /cluster command: the epoch after it.
type Reply struct {
	Epoch   cluster.Epoch `json:"epoch,omitempty"`
	Primary string        `json:"primary,omitempty"`
	// Note is what a forced promotion of a resync's target loses.
	Note string `json:"note,omitempty"`
}

func serveClusterStatus(w http.ResponseWriter, r *http.Request, m Member) {
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout(r.URL.Query().Get("timeout_ms")))
	defer cancel()
	v := ClusterView{Status: m.Status()}
	if r.URL.Query().Get("consistent") != "" {
		s, err := m.Consistent(ctx)
		if err != nil {
			writeError(w, err)
			return
		}
		v.Volume, v.Consistent = s, true
	}
	members, err := m.Members(ctx)
	if err != nil {
		v.MembersError = err.Error()
	}
	v.Members = members
	writeJSON(w, v)
}

func requestTimeout(ms string) time.Duration {
	n, err := strconv.ParseInt(ms, 10, 64)
	if err != nil || n <= 0 {
		return DefaultTimeout
	}
	return min(time.Duration(n)*time.Millisecond, 10*time.Minute)
}

// command decodes a Request, runs do within its timeout and answers.
func command(do func(context.Context, Request) (Reply, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req Request
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil {
			writeError(w, fmt.Errorf("%w: request body: %v", cluster.ErrInvalidCommand, err))
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), requestTimeout(strconv.FormatInt(req.TimeoutMS, 10)))
		defer cancel()
		rep, err := do(ctx, req)
		respond(w, rep, err)
	}
}

// respond answers with v, or with err and its code.
func respond(w http.ResponseWriter, v any, err error) {
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, v)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// noHost is the Host of a member without a volume (the witness): it
// serves no host routes and refuses no demotion.
type noHost struct{ Host }

func (noHost) CheckDemote(string, bool) error { return nil }

func (noHost) CheckPromote(string, bool) (string, error) { return "", nil }
