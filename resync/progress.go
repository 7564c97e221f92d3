package resync

import (
	"sync/atomic"
	"time"

	"github.com/ldmirror/ldmirror/internal/failpoint"
)

// Progress counts what resyncs did; status reads it while they run. Its
// zero value is ready to use.
type Progress struct {
	done, total atomic.Uint64 // blocks of the running (or last) resync
	start       atomic.Int64  // its start, unix nanoseconds
	skipped     atomic.Uint64 // blocks found equal by digest and not sent, since the process started
	sent        atomic.Uint64 // blocks sent, since the process started
	yielding    atomic.Bool   // the running resync is at its minimum rate: the application writes
}

// Counts is a snapshot of a Progress.
type Counts struct {
	Done, Total uint64 // blocks of the running (or last) resync
	Start       time.Time
	Skipped     uint64 // blocks found equal and not sent, since start of the process
	Sent        uint64 // blocks sent, since start of the process
	Yielding    bool
}

// Counts returns a snapshot.
func (p *Progress) Counts() Counts {
	return Counts{
		Done: p.done.Load(), Total: p.total.Load(), Start: time.Unix(0, p.start.Load()),
		Skipped: p.skipped.Load(), Sent: p.sent.Load(), Yielding: p.yielding.Load(),
	}
}

// begin starts counting a resync of total blocks.
func (p *Progress) begin(total uint64) {
	p.total.Store(total)
	p.done.Store(0)
	p.start.Store(time.Now().UnixNano())
}

// add counts blocks of the running resync done. It reaches the crash
// point resync-percent once for each whole percent of the resync the
// blocks complete, so that resync-percent@N kills the source when N% of
// its resync is on the peer (docs/reliability.md, "Crash points").
func (p *Progress) add(blocks uint64) {
	done, total := p.done.Add(blocks), p.total.Load()
	if total == 0 {
		return
	}
	for pct := (done-blocks)*100/total + 1; pct <= done*100/total; pct++ {
		failpoint.Crash("resync-percent")
	}
}
