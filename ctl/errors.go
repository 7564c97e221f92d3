package ctl

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/ldmirror/ldmirror/blockdev"
	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/node"
	"github.com/ldmirror/ldmirror/transport"
	"github.com/ldmirror/ldmirror/volume"
)

// codes carry sentinel errors across the socket: the server answers with
// the code of the first sentinel the error wraps, the client's error
// unwraps to the sentinel its code names. Codes are part of the socket's
// format: never rename one.
var codes = []struct {
	code   string
	err    error
	status int
}{
	{"no-quorum", cluster.ErrNoQuorum, http.StatusServiceUnavailable},
	{"behind", cluster.ErrBehind, http.StatusServiceUnavailable},
	{"not-uptodate", cluster.ErrNotUpToDate, http.StatusConflict},
	{"stale-epoch", cluster.ErrStaleEpoch, http.StatusConflict},
	{"not-primary", cluster.ErrNotPrimary, http.StatusConflict},
	{"is-primary", cluster.ErrIsPrimary, http.StatusConflict},
	{"cluster-full", cluster.ErrClusterFull, http.StatusConflict},
	{"unknown-node", cluster.ErrUnknownNode, http.StatusNotFound},
	{"witness", cluster.ErrWitness, http.StatusConflict},
	{"invalid-command", cluster.ErrInvalidCommand, http.StatusBadRequest},
	{"auth", cluster.ErrAuth, http.StatusForbidden},
	{"closed", cluster.ErrClosed, http.StatusServiceUnavailable},
	{"peer-not-in-sync", node.ErrPeerNotInSync, http.StatusConflict},
	{"role-moved", node.ErrRoleMoved, http.StatusConflict},
	{"no-agent", node.ErrNoAgent, http.StatusConflict},
	{"in-use", node.ErrInUse, http.StatusConflict},
	{"busy", node.ErrBusy, http.StatusConflict},
	{"no-control-plane", node.ErrNoControlPlane, http.StatusConflict},
	{"not-serving", node.ErrNotServing, http.StatusConflict},
	{"disconnected", transport.ErrDisconnected, http.StatusConflict},
	{"disk-failed", blockdev.ErrDiskFailed, http.StatusConflict},
	{"disk-not-failed", volume.ErrDiskNotFailed, http.StatusConflict},
	{"resync-applying", node.ErrResyncApplying, http.StatusConflict},
	{"no-staged-resync", node.ErrNoStagedResync, http.StatusConflict},
	{"source-connected", node.ErrSourceConnected, http.StatusConflict},
}

// Error is a refusal the other end of the socket answered. It unwraps to
// the sentinel error its code names, if this side knows it.
type Error struct {
	Code     string `json:"code,omitempty"`
	Message  string `json:"error"`
	sentinel error
}

func (e *Error) Error() string { return e.Message }

// Unwrap returns the sentinel error of e's code.
func (e *Error) Unwrap() error { return e.sentinel }

// errorOf rebuilds the error a server answered with.
func errorOf(e Error) *Error {
	for _, c := range codes {
		if c.code == e.Code {
			e.sentinel = c.err
		}
	}
	return &e
}

func writeError(w http.ResponseWriter, err error) {
	e := Error{Message: err.Error()}
	status := http.StatusInternalServerError
	for _, c := range codes {
		if errors.Is(err, c.err) {
			e.Code, status = c.code, c.status
			break
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(e)
}
