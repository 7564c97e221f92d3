package stage

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ldmirror/ldmirror/transport"
)

// Target answers the Stage requests of a resync's source (transport
// KindStage) with an Area: it decides whether a resync is staged, refused
// or taken unprotected, and reports the Area's state.
type Target struct {
	Area *Area
	// Node is this host's ID, for the reasons it gives.
	Node string
	// Off takes every resync unprotected: the volume is inconsistent
	// until each completes (for measurement, and to show that the tests
	// can fail).
	Off bool
	// Unsafe takes a resync there is no room to stage unprotected, rather
	// than refuse it.
	Unsafe bool
	// Start says what a staged resync starts from, or, if keep is false,
	// why the volume holds nothing worth staging a resync for (its data
	// was discarded, or its disk replaced): the resync is then taken
	// unprotected.
	Start func() (b Begin, keep bool, why string)
}

// statusHold is how long a status request waits for a running apply to
// end before it answers: well under any link timeout.
const statusHold = 200 * time.Millisecond

// Handle answers req, a KindStage request, on its own goroutine.
func (t *Target) Handle(req *transport.Request) {
	op, need := req.StageOp, req.StageNeed
	go func() {
		r, err := t.answer(op, need)
		var b []byte
		if err == nil {
			b, err = r.MarshalBinary()
		}
		req.Reply(b, err)
	}()
}

// answer runs one Stage request.
func (t *Target) answer(op transport.StageOp, need int64) (transport.StageReply, error) {
	switch op {
	case transport.StageBegin:
		return t.begin(need), nil
	case transport.StageCommit:
		if err := t.Area.Commit(); err != nil && !errors.Is(err, ErrNotStaging) {
			return transport.StageReply{}, err
		}
	case transport.StageStatus:
		ctx, cancel := context.WithTimeout(context.Background(), statusHold)
		defer cancel()
		if in := t.Area.Info(); in.State == Committing || in.State == Applying {
			_ = t.Area.WaitApplied(ctx) // its failure shows in Info
		}
	}
	return Reply(t.Area.Info()), nil
}

// begin starts staging a resync of need bytes, or says why not.
func (t *Target) begin(need int64) transport.StageReply {
	if in := t.Area.Info(); in.State != Idle {
		return Reply(in) // staging goes on; a committed resync is applied first
	}
	if t.Off {
		return transport.StageReply{State: transport.StageUnprotected,
			Reason: fmt.Sprintf("resync protection is off on %s (--resync-protection=false)", t.Node)}
	}
	if need == 0 {
		return transport.StageReply{State: transport.StageIdle}
	}
	b, keep, why := t.Start()
	if !keep {
		return transport.StageReply{State: transport.StageUnprotected, Reason: why}
	}
	in, err := t.Area.Begin(need, b)
	switch {
	case err == nil:
		return Reply(in)
	case errors.Is(err, ErrCommitted):
		return Reply(t.Area.Info())
	case errors.Is(err, ErrNoRoom) && t.Unsafe:
		return transport.StageReply{State: transport.StageUnprotected,
			Reason: fmt.Sprintf("%s: %s; taken unprotected (--unsafe-inconsistent)", t.Node, err)}
	case errors.Is(err, ErrNoRoom):
		return transport.StageReply{State: transport.StageRefused,
			Reason: fmt.Sprintf("%s: %s; free space there, or restart %s's daemon with --unsafe-inconsistent to take the resync unprotected", t.Node, err, t.Node)}
	}
	return transport.StageReply{State: transport.StageRefused, Reason: fmt.Sprintf("%s could not stage the resync: %v", t.Node, err)}
}

// Reply is in as a Stage reply.
func Reply(in Info) transport.StageReply {
	r := transport.StageReply{AsOf: in.AsOf, Staged: uint64(max(in.Bytes, 0)), ApplyDone: in.ApplyDone, ApplyTotal: in.ApplyTotal}
	switch in.State {
	case Staging:
		r.State = transport.StageStaging
	case Committing, Applying:
		r.State = transport.StageApplying
		if in.Err != nil {
			r.Reason = in.Err.Error()
		}
	}
	return r
}
