// Package netns builds throwaway networks of Linux network namespaces for
// end-to-end tests and the fault campaign (scripts/torture, which owns its
// labs through the TB interface instead of a testing.TB): each test host
// is a namespace with one interface, eth0,
// cabled to a bridge that lives in a namespace of its own, so test traffic
// never touches the machine's own interfaces and only namespaces the lab
// created receive it.
//
//	lab := netns.NewLab(t, "a", "b", "w") // namespaces ldm-<id>-a, ..., ldm-<id>-br
//	cmd := lab.Command("a", "ldmirror", "witness", "--bind", lab.Addr("a")+":7400", ...)
//	lab.LinkDown("w")             // pull w's cable: its packets go nowhere
//	lab.Partition("a", "b")       // a and b drop each other's packets; w still reaches both
//	lab.BlockPort("a", "w", 7400) // a and w drop their packets to or from port 7400 only
//	lab.DropFrom("a", "b")        // one way: b drops what a sends; b's packets still reach a
//	lab.Netem("a", "delay 20ms loss 1%")
//
// Hosts get 10.231.N.1, .2, ... in one /24 (N is random per lab, which only
// helps reading logs: labs do not share a network). Faults are made where a
// real network makes them: LinkDown sets the bridge's side of the host's
// veth down (the host sees no carrier, its packets are lost), Partition
// and BlockPort add nftables drop rules in both hosts' namespaces, DropFrom
// one in the receiving host's input only, Netem
// puts a netem qdisc on the host's eth0.
//
// Cleanup is idempotent and survives a crashed test: NewLab records its
// owner's PID in /run/ldmirror-netns/<id> before creating anything and
// removes, first, the namespaces of every lab whose owner is dead. Close
// (registered with t.Cleanup) kills the processes left in the lab's
// namespaces and deletes them.
//
// NewLab skips the test, saying why, when it is not root or ip(8), tc(8) or
// nft(8) is missing. Lab methods that change the network fail the test on
// error and must be called from the test's goroutine; Exec, Command and Do
// return errors instead, since a failing command is often what a test
// expects.
package netns
