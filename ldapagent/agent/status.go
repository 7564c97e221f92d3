package agent

import (
	"time"

	"github.com/ldmirror/ldmirror/cluster"
)

// Agent states, as status shows them.
const (
	// StateStarting: no control-plane state seen yet.
	StateStarting = "starting"
	// StateSecondaryWatching: the other host is primary (or none is);
	// this host probes its directory server and fails over when it is
	// down and the rules allow.
	StateSecondaryWatching = "secondary-watching"
	// StateFailingOver: this host runs its ready check and asks the
	// control plane for the primary role.
	StateFailingOver = "failing-over"
	// StatePromoting: this host is primary and waits for its volume, then
	// runs the promote hooks.
	StatePromoting = "promoting"
	// StatePrimaryServing: the promote hooks completed in the current
	// epoch.
	StatePrimaryServing = "primary-serving"
	// StateDemoting: the demote hooks run (the role was lost, or at start).
	StateDemoting = "demoting"
	// StateSwapping: an orderly swap: demote hooks, then Volume.Swap,
	// and the promote hooks again if it fails.
	StateSwapping = "swapping"
	// StateFailed: a hook (or the volume) failed. The agent asks for no
	// role change until an operator runs Retry; Status.Failure says what
	// failed.
	StateFailed = "failed"
	// StateStopped: after Close.
	StateStopped = "stopped"
)

// Status is the agent's state for `ldmirror status`. Times are the
// agent's clock; durations are milliseconds.
type Status struct {
	Node  string `json:"node"`
	State string `json:"state"`
	// StateSince is when State was entered.
	StateSince time.Time `json:"state_since"`
	// Role is "primary" or "secondary" as the control plane names this
	// host; Primary and Epoch are the control plane's.
	Role    cluster.Role  `json:"role"`
	Primary string        `json:"primary,omitempty"`
	Epoch   cluster.Epoch `json:"epoch"`
	// ServingEpoch is the epoch in which the promote hooks completed here;
	// 0 when this host does not serve.
	ServingEpoch cluster.Epoch `json:"serving_epoch,omitempty"`
	// Hold is why the agent is not acting although it might (for example
	// "not failing over: this host's disk is outdated").
	Hold string `json:"hold,omitempty"`
	// Service is the directory server being probed: the peer's while
	// secondary, this host's own while primary.
	Service ServiceHealth `json:"service"`
	// Ready is this host's readiness as the agent judges it; Reported
	// says the control plane holds that same value.
	Ready         bool   `json:"ready"`
	ReadyDetail   string `json:"ready_detail,omitempty"`
	ReadyReported bool   `json:"ready_reported"`
	// LastReadyCheck is the last run of the ready_check hook.
	LastReadyCheck *HookResult `json:"last_ready_check,omitempty"`

	Failback        string  `json:"failback"`
	Preferred       string  `json:"preferred,omitempty"`
	MinSwapInterval float64 `json:"min_swap_interval_ms"`

	// Failovers counts the failovers this agent obtained; LastFailover is
	// its last attempt (Error set if it was refused).
	Failovers    uint64      `json:"failovers"`
	LastFailover *RoleChange `json:"last_failover,omitempty"`
	// Swaps counts the swaps (manual or automatic failback) this agent
	// completed; LastSwap is its last attempt.
	Swaps    uint64      `json:"swaps"`
	LastSwap *RoleChange `json:"last_swap,omitempty"`
	// LastHooks are the results of the last promote or demote sequence.
	LastHooks []HookResult `json:"last_hooks,omitempty"`
	// Failure is set in StateFailed. LastFailure is the last failure,
	// kept after Retry or a clean-up cleared it.
	Failure     *Failure `json:"failure,omitempty"`
	LastFailure *Failure `json:"last_failure,omitempty"`
}

// ServiceHealth is the probe's view of one directory server.
type ServiceHealth struct {
	// Target is "peer" or "local"; URL empty when nothing is probed.
	Target              string    `json:"target"`
	URL                 string    `json:"url,omitempty"`
	Up                  bool      `json:"up"`
	Known               bool      `json:"known"`
	ConsecutiveFailures int       `json:"consecutive_failures"`
	Probes              uint64    `json:"probes"`
	LastSuccess         time.Time `json:"last_success,omitzero"`
	LastError           string    `json:"last_error,omitempty"`
	LastLatencyMs       float64   `json:"last_latency_ms"`
}

// RoleChange is a failover or swap this agent attempted.
type RoleChange struct {
	At     time.Time     `json:"at"`
	From   string        `json:"from"`
	To     string        `json:"to,omitempty"`
	Epoch  cluster.Epoch `json:"epoch,omitempty"`
	Reason string        `json:"reason"`
	// Error is why it did not happen; empty if it did.
	Error string `json:"error,omitempty"`
}

// Failure is what put the agent in StateFailed.
type Failure struct {
	At time.Time `json:"at"`
	// Sequence is "promote" or "demote"; Context says why it ran.
	Sequence string `json:"sequence"`
	Context  string `json:"context,omitempty"`
	// Hook is the hook that failed, or "await-volume" if the volume did
	// not become writable.
	Hook     string        `json:"hook"`
	ExitCode int           `json:"exit_code"`
	TimedOut bool          `json:"timed_out,omitempty"`
	Error    string        `json:"error"`
	Tail     []string      `json:"tail,omitempty"`
	Epoch    cluster.Epoch `json:"epoch"`
}
