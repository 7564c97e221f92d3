package transport

import (
	"encoding/binary"
	"fmt"
	"time"
)

// StageOp is what a Stage request asks of the resync target's staging
// area (see doc.go).
type StageOp uint8

// Stage operations.
const (
	// StageBegin: stage what follows, about Need bytes, unless staged
	// already; the reply says whether the target does.
	StageBegin StageOp = iota + 1
	// StageCommit: the resync completed; commit the staged blocks and
	// apply them to the volume.
	StageCommit
	// StageStatus: report the staging area's state; while an apply runs
	// the target may hold the reply until it ended, up to a short bound.
	StageStatus
)

func (o StageOp) String() string {
	switch o {
	case StageBegin:
		return "begin"
	case StageCommit:
		return "commit"
	case StageStatus:
		return "status"
	}
	return fmt.Sprintf("stage-op(%d)", uint8(o))
}

// StageState is the state a Stage reply reports.
type StageState uint8

// States of a resync target's staging area.
const (
	// StageIdle: nothing is staged; writes go to the volume.
	StageIdle StageState = iota
	// StageStaging: writes are staged; the volume is consistent as of
	// AsOf.
	StageStaging
	// StageApplying: the staged resync is committed and being applied.
	StageApplying
	// StageUnprotected: the target takes the resync without staging it
	// (Reason says why): it is inconsistent until the resync completes.
	StageUnprotected
	// StageRefused: the target refuses the resync (Reason says why, e.g.
	// no room to stage it).
	StageRefused
	stageStateEnd
)

func (s StageState) String() string {
	switch s {
	case StageIdle:
		return "idle"
	case StageStaging:
		return "staging"
	case StageApplying:
		return "applying"
	case StageUnprotected:
		return "unprotected"
	case StageRefused:
		return "refused"
	}
	return fmt.Sprintf("stage-state(%d)", uint8(s))
}

// stageRequestSize is a Stage request's payload: op, 7 reserved bytes,
// need.
const stageRequestSize = 16

// maxStageReason bounds the reason a Stage reply carries.
const maxStageReason = 512

// stageReplyFixed is a Stage reply's size without its reason.
const stageReplyFixed = 40

// StageReply is the target's answer to a Stage request.
type StageReply struct {
	State StageState
	// AsOf is the time the target's volume is consistent as of while it
	// stages.
	AsOf time.Time
	// Staged is the size of the target's staging log in bytes.
	Staged uint64
	// ApplyDone and ApplyTotal count the blocks of a running apply.
	ApplyDone, ApplyTotal uint64
	// Reason says why the target does not stage (StageUnprotected,
	// StageRefused).
	Reason string
}

// MarshalBinary encodes the reply: state, 7 reserved bytes, as-of (unix
// ns), staged bytes, apply done and total blocks, then the reason.
func (r StageReply) MarshalBinary() ([]byte, error) {
	reason := r.Reason
	if len(reason) > maxStageReason {
		reason = reason[:maxStageReason]
	}
	b := make([]byte, stageReplyFixed, stageReplyFixed+len(reason))
	b[0] = byte(r.State)
	var asOf int64
	if !r.AsOf.IsZero() {
		asOf = r.AsOf.UnixNano()
	}
	binary.BigEndian.PutUint64(b[8:], uint64(asOf))
	binary.BigEndian.PutUint64(b[16:], r.Staged)
	binary.BigEndian.PutUint64(b[24:], r.ApplyDone)
	binary.BigEndian.PutUint64(b[32:], r.ApplyTotal)
	return append(b, reason...), nil
}

// UnmarshalBinary decodes a reply.
func (r *StageReply) UnmarshalBinary(b []byte) error {
	switch {
	case len(b) < stageReplyFixed || len(b) > stageReplyFixed+maxStageReason:
		return fmt.Errorf("%w: stage reply of %d bytes", ErrMalformed, len(b))
	case StageState(b[0]) >= stageStateEnd:
		return fmt.Errorf("%w: stage reply state %d", ErrMalformed, b[0])
	case b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0:
		return fmt.Errorf("%w: stage reply reserved bytes", ErrMalformed)
	}
	*r = StageReply{
		State:      StageState(b[0]),
		Staged:     binary.BigEndian.Uint64(b[16:]),
		ApplyDone:  binary.BigEndian.Uint64(b[24:]),
		ApplyTotal: binary.BigEndian.Uint64(b[32:]),
		Reason:     string(b[stageReplyFixed:]),
	}
	if ns := int64(binary.BigEndian.Uint64(b[8:])); ns != 0 {
		r.AsOf = time.Unix(0, ns).UTC()
	}
	return nil
}

// parseStage decodes a Stage request's payload into req.
func parseStage(req *Request, p []byte) error {
	switch {
	case len(p) != stageRequestSize:
		return fmt.Errorf("%w: stage frame of %d bytes, want %d", ErrMalformed, len(p), stageRequestSize)
	case p[0] < byte(StageBegin) || p[0] > byte(StageStatus):
		return fmt.Errorf("%w: stage operation %d", ErrMalformed, p[0])
	case p[1]|p[2]|p[3]|p[4]|p[5]|p[6]|p[7] != 0:
		return fmt.Errorf("%w: stage frame reserved bytes", ErrMalformed)
	}
	req.StageOp = StageOp(p[0])
	req.StageNeed = int64(binary.BigEndian.Uint64(p[8:]))
	if req.StageNeed < 0 || req.StageOp != StageBegin && req.StageNeed != 0 {
		return fmt.Errorf("%w: stage %s of %d bytes", ErrMalformed, req.StageOp, req.StageNeed)
	}
	return nil
}

// SubmitStage asks the peer's staging area to do op; need is the bytes a
// StageBegin expects to stage. WaitReply returns a StageReply's encoding
// (ParseStageReply).
func (s *Session) SubmitStage(op StageOp, need int64) (*Call, error) {
	if op < StageBegin || op > StageStatus || need < 0 || op != StageBegin && need != 0 {
		return nil, fmt.Errorf("stage %s of %d bytes", op, need)
	}
	c, err := s.acquire()
	if err != nil {
		return nil, err
	}
	c.data, c.kind, c.jkind = nil, TypeStage, 0
	p := c.frame[HeaderSize : HeaderSize+stageRequestSize]
	clear(p)
	p[0] = byte(op)
	binary.BigEndian.PutUint64(p[8:], uint64(need))
	return s.enqueue(c, TypeStage, stageRequestSize)
}

// Stage runs a Stage request on s and decodes the reply.
func Stage(s *Session, op StageOp, need int64) (StageReply, error) {
	var r StageReply
	call, err := s.SubmitStage(op, need)
	if err != nil {
		return r, err
	}
	body, err := call.WaitReply()
	if err != nil {
		return r, err
	}
	return r, r.UnmarshalBinary(body)
}
