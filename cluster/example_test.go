package cluster_test

import (
	"context"
	"errors"
	"log"
	"time"

	"github.com/ldmirror/ldmirror/cluster"
)

// A primary that lost its peer commits "peer outdated" before it
// acknowledges another write; without quorum it keeps I/O suspended and
// retries, and if it was deposed meanwhile it stops writing.
func ExampleCluster_MarkPeerOutdated() {
	var c *cluster.Cluster // from cluster.Open, on data host "a"
	var epoch cluster.Epoch = 7
	suspendIO, resumeIO, becomeSecondary := func() {}, func() {}, func() {}

	suspendIO()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := c.MarkPeerOutdated(ctx, epoch, "b")
		cancel()
		switch {
		case err == nil:
			resumeIO() // alone, with b outdated: b cannot be promoted now
			return
		case errors.Is(err, cluster.ErrNoQuorum):
			continue // neither b nor the witness reachable: stay suspended
		case errors.Is(err, cluster.ErrStaleEpoch), errors.Is(err, cluster.ErrNotPrimary):
			becomeSecondary() // another host holds a newer epoch
			return
		default:
			log.Printf("mark peer outdated: %v", err)
			return
		}
	}
}

// The LDAP agent on b, seeing a's directory server fail, asks the control
// plane to move the role. Only one of several racing agents wins: the
// others get ErrStaleEpoch.
func ExampleCluster_Failover() {
	var c *cluster.Cluster // from cluster.Open, on data host "b"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s := c.State()
	primary, epoch, err := c.Failover(ctx, s.Primary, s.Epoch)
	switch {
	case err == nil:
		log.Printf("%s is primary in epoch %d", primary, epoch)
	case errors.Is(err, cluster.ErrNotUpToDate):
		log.Print("no uptodate host to fail over to: an operator must decide (promote --force)")
	case errors.Is(err, cluster.ErrStaleEpoch):
		log.Print("the role already moved")
	default:
		log.Printf("failover: %v", err)
	}
}
