package main

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"time"
)

// fault is one nemesis action. inject breaks something and returns once
// the fault is in place; undo ends it as the runbook says (restart what was
// killed, heal the network, continue what was stopped). What the operator
// does in between (a failover) and after (waiting for the pair to serve
// and resync) is the runbook's, not the fault's.
type fault interface {
	inject(ctx context.Context, r *roundRun) error
	undo(ctx context.Context, r *roundRun) error
}

// armer is a fault that prepares the pair before the round's writers
// start (a crash-point round restarts a daemon with its point armed).
type armer interface {
	arm(ctx context.Context, r *roundRun) error
}

// newFault returns the action of spec's kind.
func newFault(spec faultSpec) (fault, error) {
	switch kindOf(spec.Kind).action {
	case "kill":
		return &killFault{}, nil
	case "partition":
		return partitionFault{}, nil
	case "isolate":
		return &isolateFault{}, nil
	case "stop":
		return stopFault{}, nil
	case "swap":
		return swapFault{}, nil
	case "crash":
		return &crashFault{}, nil
	case "disk":
		return &diskFault{}, nil
	case "slapd":
		return slapdFault{}, nil
	case "oneway":
		return &onewayFault{}, nil
	}
	return nil, fmt.Errorf("no fault of kind %q", spec.Kind)
}

// hostsOf resolves a target role to host names at the round's start.
func (r *roundRun) hostsOf(target string) []string {
	switch target {
	case "primary":
		return []string{r.P}
	case "secondary":
		return []string{r.S}
	case "witness":
		return []string{"w"}
	case "all":
		return []string{"w", "a", "b"}
	}
	return nil
}

// killFault: kill -9, restart at undo (the witness first: the daemons
// need a quorum to learn their role).
type killFault struct{ killed []string }

func (f *killFault) inject(ctx context.Context, r *roundRun) error {
	f.killed = r.hostsOf(r.spec.Target)
	for _, h := range f.killed {
		if err := r.c.h.kill(ctx, h); err != nil {
			return err
		}
	}
	r.notef("killed %s", strings.Join(f.killed, ", "))
	return nil
}

func (f *killFault) undo(ctx context.Context, r *roundRun) error {
	for _, h := range f.killed {
		if err := r.c.h.start(ctx, h, r.n); err != nil {
			return fmt.Errorf("restart %s: %w", h, err)
		}
	}
	r.notef("restarted %s", strings.Join(f.killed, ", "))
	return nil
}

// partitionFault: a and b drop each other's packets; both still reach w.
type partitionFault struct{}

func (partitionFault) inject(_ context.Context, r *roundRun) error {
	r.c.lab.Partition("a", "b")
	return nil
}

func (partitionFault) undo(_ context.Context, r *roundRun) error {
	r.c.lab.Heal("a", "b")
	return nil
}

// onewayFault: the packets of one host to another are dropped, one way
// only (netns.Lab.DropFrom); the target is "from>to" in roles.
type onewayFault struct{ from, to string }

func (f *onewayFault) inject(_ context.Context, r *roundRun) error {
	from, to, _ := strings.Cut(r.spec.Target, ">")
	f.from, f.to = r.hostsOf(from)[0], r.hostsOf(to)[0]
	r.c.lab.DropFrom(f.from, f.to)
	r.notef("%s drops what %s sends", f.to, f.from)
	return nil
}

func (f *onewayFault) undo(_ context.Context, r *roundRun) error {
	r.c.lab.UndropFrom(f.from, f.to)
	return nil
}

// isolateFault: one host's cable pulled (the bridge's end of its link
// down): it reaches no one.
type isolateFault struct{ host string }

func (f *isolateFault) inject(_ context.Context, r *roundRun) error {
	f.host = r.hostsOf(r.spec.Target)[0]
	r.c.lab.LinkDown(f.host)
	r.notef("link of %s down", f.host)
	return nil
}

func (f *isolateFault) undo(_ context.Context, r *roundRun) error {
	r.c.lab.LinkUp(f.host)
	return nil
}

// stopFault: SIGSTOP of the primary's daemon, SIGCONT at undo. The time it
// resumes is when a deposed async primary may still acknowledge writes
// its successor lacks (docs/journal.md: until it notices the loss).
type stopFault struct{}

func (stopFault) inject(_ context.Context, r *roundRun) error {
	return r.c.h.signal(r.P, syscall.SIGSTOP)
}

func (stopFault) undo(_ context.Context, r *roundRun) error {
	if err := r.c.h.signal(r.P, syscall.SIGCONT); err != nil {
		return err
	}
	r.resumed = time.Now()
	return nil
}

// swapFault is the runbook's planned swap (docs/cluster.md, "Swap"): the
// file system's writer stops, the file system is unmounted and its loop
// device detached, then `ldmirror swap` runs on the primary while the raw
// writer goes on writing.
type swapFault struct{}

func (swapFault) inject(ctx context.Context, r *roundRun) error {
	if err := r.releaseFS(ctx); err != nil {
		return err
	}
	out, err := r.c.h.cli(ctx, 60*time.Second, "swap", "--dir", r.c.h.dir[r.P])
	if err != nil {
		r.notef("swap refused: %v", err)
		return nil
	}
	r.movedBy = "swap"
	r.notef("%s", strings.TrimSpace(out))
	return nil
}

func (swapFault) undo(context.Context, *roundRun) error { return nil }

// slapdFault: kill -9 of slapd on the primary; the runbook starts it again
// on the same file system at undo (LMDB needs no recovery: every commit
// is durable or not there).
type slapdFault struct{}

func (slapdFault) inject(_ context.Context, r *roundRun) error {
	if r.c.dir == nil || r.c.dir.slapd == nil {
		r.notef("no slapd runs: nothing to kill")
		return nil
	}
	host := r.c.dir.host
	if err := r.c.dir.killSlapd(); err != nil {
		return err
	}
	r.notef("killed slapd on %s", host)
	return nil
}

func (slapdFault) undo(ctx context.Context, r *roundRun) error {
	if r.c.dir == nil || !r.c.mounted || r.tornDown {
		return nil
	}
	if err := r.c.dir.startSlapd(ctx, r.P); err != nil {
		r.notef("slapd did not start again on %s: %v", r.P, err)
		return nil
	}
	r.notef("started slapd on %s again", r.P)
	return nil
}
