package cluster

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/ldmirror/ldmirror/pki"
)

// Errors returned by the FSM and the API. They survive forwarding to the
// leader (see rpc.go), so callers can test them with errors.Is wherever the
// command was submitted.
var (
	// ErrNotUpToDate refuses a promotion or transfer to a host whose disk is
	// not uptodate (docs/invariants.md, invariant 5).
	ErrNotUpToDate = errors.New("disk is not uptodate")
	// ErrStaleEpoch refuses a command that names an epoch older than the
	// current one: its sender has been deposed or raced another change.
	ErrStaleEpoch = errors.New("stale epoch")
	// ErrNotPrimary refuses a command that only the current primary may send.
	ErrNotPrimary = errors.New("not the primary")
	// ErrNoQuorum reports that a command could not be committed before the
	// context ended: no leader, or the leader cannot reach a quorum. The
	// command may still commit later, so callers re-read the state (every
	// command is safe to resubmit).
	ErrNoQuorum = errors.New("no quorum: the command was not committed in time")
	// ErrBehind reports that the leader answered a consistent read but this
	// member's copy had not applied the leader's state before the context
	// ended: it is still replaying the log (after a restart, say). Retry;
	// until then the member's own state is older than the cluster's.
	ErrBehind = errors.New("this member has not caught up with the raft leader")
	// ErrUnknownNode names a host the cluster does not know.
	ErrUnknownNode = errors.New("unknown node")
	// ErrWitness refuses to give a witness a role or a disk state.
	ErrWitness = errors.New("node is a witness")
	// ErrIsPrimary refuses to remove the current primary.
	ErrIsPrimary = errors.New("node is the primary (demote it or fail over first)")
	// ErrClusterFull refuses a third data host: a volume is mirrored by a pair.
	ErrClusterFull = errors.New("the cluster already has two data hosts")
	// ErrInvalidCommand reports a malformed or unsupported command.
	ErrInvalidCommand = errors.New("invalid command")
	// ErrAuth reports a peer whose certificate was refused, or that
	// refused ours (another CA, expired, not a member's).
	ErrAuth = errors.New("cluster peer authentication failed")
	// ErrNotAuthorized refuses a command its sender may not give: a
	// member speaks only for itself (its own readiness, its own join) or,
	// as primary, for its peer's disk; a witness never for a data host.
	ErrNotAuthorized = errors.New("sender not authorized")
	// ErrCorruptStore reports a raft log, stable store or snapshot that
	// cannot be read; the message names the file.
	ErrCorruptStore = errors.New("corrupt raft store")
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("cluster is closed")
)

// Epoch numbers the primary role's tenures. It grows by one on every role
// change (promote, demote, transfer, failover), never goes back, and is the
// fencing token every replication frame carries.
type Epoch uint64

// DiskState is what the control plane knows of a host's copy of the volume.
type DiskState string

// Disk states, named as `ldmirror status` shows them.
const (
	// DiskUpToDate: the host holds every acknowledged write.
	DiskUpToDate DiskState = "uptodate"
	// DiskOutdated: the host missed writes; it may not be promoted until a
	// resync makes it uptodate again.
	DiskOutdated DiskState = "outdated"
	// DiskInconsistent: the host's copy is mid-resync or never synced.
	DiskInconsistent DiskState = "inconsistent"
	// DiskDiskless: a witness, which holds no copy.
	DiskDiskless DiskState = "diskless"
	// DiskFailed: the host's own disk failed an I/O and the host stopped
	// using it. Only the host itself shows it; the control plane records
	// such a host outdated (its peer fenced it).
	DiskFailed DiskState = "failed"
)

func (d DiskState) valid() bool {
	switch d {
	case DiskUpToDate, DiskOutdated, DiskInconsistent:
		return true
	}
	return false
}

// HostState is one member's entry in the replicated state.
type HostState struct {
	ID string `json:"id"`
	// Witness hosts vote but hold no volume and are never primary.
	Witness bool      `json:"witness,omitempty"`
	Disk    DiskState `json:"disk"`
	// DiskEpoch is the epoch in which Disk last changed, so status can say
	// "outdated since epoch N".
	DiskEpoch Epoch `json:"disk_epoch"`
	// AckedSeq is the last replication sequence number the host reported
	// acknowledged, in AckedEpoch.
	AckedSeq   uint64 `json:"acked_seq"`
	AckedEpoch Epoch  `json:"acked_epoch"`
	// Ready is the host's own verdict, reported by its LDAP agent
	// (ReportReady), on whether it can serve the directory: as a secondary,
	// its ready check passes; as the primary, its directory server answers.
	// An agent never hands the role to a host that is not ready. A host
	// whose agent never reported has Ready false and ReadySince zero.
	Ready bool `json:"ready,omitempty"`
	// ReadyDetail is the reason the agent gave, for status.
	ReadyDetail string `json:"ready_detail,omitempty"`
	// ReadySince is when Ready took its current value: the leader's clock
	// at the entry that changed it, so that every member records the same.
	ReadySince time.Time `json:"ready_since,omitzero"`
}

// MaxReadyDetail bounds HostState.ReadyDetail; ReportReady shortens longer
// details to fit.
const MaxReadyDetail = 256

// ForcedPromotion records the last promotion an operator forced past the
// uptodate check, so that status keeps showing it.
type ForcedPromotion struct {
	Node   string `json:"node"`
	Reason string `json:"reason"`
	// Disk is the state the node's disk had when it was forced.
	Disk  DiskState `json:"disk"`
	Epoch Epoch     `json:"epoch"`
	Index uint64    `json:"index"`
	// At is the leader's clock when it appended the entry, taken from the
	// log so that every member records the same time.
	At time.Time `json:"at"`
}

// VolumeState is the replicated control-plane state of the volume.
type VolumeState struct {
	// Primary is the node ID of the primary, or "" when there is none.
	Primary string `json:"primary,omitempty"`
	Epoch   Epoch  `json:"epoch"`
	// EpochIndex is the raft log index of the entry that began Epoch.
	EpochIndex uint64 `json:"epoch_index"`
	// Hosts is sorted by ID.
	Hosts []HostState `json:"hosts"`
	// ForcedPromotions counts promotions forced past the uptodate check.
	ForcedPromotions uint64          `json:"forced_promotions"`
	LastForced       ForcedPromotion `json:"last_forced,omitzero"`
	// Index is the raft index of the last entry applied to this copy; a
	// local State() may lag the leader by some entries.
	Index uint64 `json:"index"`
}

// Host returns the entry for id.
func (s VolumeState) Host(id string) (HostState, bool) {
	i, ok := s.find(id)
	if !ok {
		return HostState{}, false
	}
	return s.Hosts[i], true
}

// Holds reports whether node is primary in epoch e according to this
// copy. A data host checks it before accepting writes; because a local copy
// can lag, it is a necessary check, not a sufficient one: fencing also
// rests on the peer refusing stale frames and on MarkPeerOutdated
// committing.
func (s VolumeState) Holds(node string, e Epoch) bool {
	return node != "" && s.Primary == node && s.Epoch == e
}

// DataHosts returns the IDs of the hosts that hold a volume, sorted.
func (s VolumeState) DataHosts() []string {
	var ids []string
	for _, h := range s.Hosts {
		if !h.Witness {
			ids = append(ids, h.ID)
		}
	}
	return ids
}

func (s VolumeState) find(id string) (int, bool) {
	return slices.BinarySearchFunc(s.Hosts, id, func(h HostState, id string) int {
		switch {
		case h.ID < id:
			return -1
		case h.ID > id:
			return 1
		}
		return 0
	})
}

// clone returns a deep copy that the caller may keep.
func (s *VolumeState) clone() VolumeState {
	c := *s
	c.Hosts = slices.Clone(s.Hosts)
	return c
}

// validNodeID checks a node ID as certificates name them (pki): 1 to 64
// of A-Z a-z 0-9 . _ -. IDs appear in logs, status and raft's
// configuration.
func validNodeID(id string) error {
	if err := pki.ValidNodeID(id); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidCommand, err)
	}
	return nil
}

// Role is what a data host does in an epoch: the primary the control plane
// names takes the writes, the other host applies them.
type Role string

// Roles, named as status and the agent's hooks (LDMIRROR_ROLE) show them.
const (
	RolePrimary   Role = "primary"
	RoleSecondary Role = "secondary"
)
