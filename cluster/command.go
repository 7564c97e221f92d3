package cluster

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"
)

// commandVersion is the encoding version of the commands this code writes.
// A member that reads a newer version refuses the command (ErrInvalidCommand)
// rather than guess, so all members must run a version that knows a command
// before anyone submits it.
const commandVersion = 1

// op names a command. The names are part of the log format: never rename one.
type op string

const (
	opRegister     op = "register"      // Node joins, as a data host or a Witness
	opRemove       op = "remove"        // Node leaves
	opPromote      op = "promote"       // Node becomes primary (Force, Reason)
	opDemote       op = "demote"        // Node, primary in Epoch, steps down
	opTransfer     op = "transfer"      // orderly swap: primary By hands over to Node
	opFailover     op = "failover"      // primary By (or none) replaced by an uptodate data host
	opMarkOutdated op = "mark-outdated" // primary By, in Epoch, outdates its peer Node
	opSetDisk      op = "set-disk"      // Node's disk is Disk, reported in Epoch
	opAckSeq       op = "ack-seq"       // Node acknowledged Seq in Epoch
	opReportReady  op = "report-ready"  // Node's agent reports it can serve (Ready, Detail)
)

// command is one entry of the raft log. Fields a given op does not use stay
// empty; which ones each op reads is in the apply functions below.
type command struct {
	Op      op        `json:"op"`
	Node    string    `json:"node,omitempty"`
	By      string    `json:"by,omitempty"`
	Epoch   Epoch     `json:"epoch"`
	Force   bool      `json:"force,omitempty"`
	Reason  string    `json:"reason,omitempty"`
	Witness bool      `json:"witness,omitempty"`
	Disk    DiskState `json:"disk,omitempty"`
	Seq     uint64    `json:"seq,omitempty"`
	Ready   bool      `json:"ready,omitempty"`
	Detail  string    `json:"detail,omitempty"`
	// Sender is the member whose certificate sent the command, stamped
	// by the leader that committed it (never taken from the submitter),
	// and SenderWitness its role; authorize checks the command against
	// them. Entries committed before senders were stamped have none.
	Sender        string `json:"sender,omitempty"`
	SenderWitness bool   `json:"sender_witness,omitempty"`
}

// encode returns the log entry for c: one version byte, then JSON. JSON keeps
// the log readable with standard tools; the control plane's rate is a few
// commands per role change, so size does not matter.
func (c command) encode() ([]byte, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	return append([]byte{commandVersion}, b...), nil
}

func decodeCommand(b []byte) (command, error) {
	var c command
	if len(b) == 0 {
		return c, fmt.Errorf("%w: empty log entry", ErrInvalidCommand)
	}
	if b[0] != commandVersion {
		return c, fmt.Errorf("%w: command encoding version %d, this member reads %d (upgrade it)", ErrInvalidCommand, b[0], commandVersion)
	}
	if err := json.Unmarshal(b[1:], &c); err != nil {
		return c, fmt.Errorf("%w: %v", ErrInvalidCommand, err)
	}
	return c, nil
}

// apply runs c against s, as the entry at raft index with the leader's
// append time at. It either changes s and returns the epoch after c, or
// leaves s untouched and returns an error: every check runs before the first
// change. It must depend on nothing but s and its arguments, because every
// member runs it and they must agree.
func (s *VolumeState) apply(c command, index uint64, at time.Time) (Epoch, error) {
	err := s.authorize(c)
	switch {
	case err != nil:
	case c.Op == opRegister:
		err = s.register(c)
	case c.Op == opRemove:
		err = s.remove(c)
	case c.Op == opPromote:
		err = s.promote(c, index, at)
	case c.Op == opDemote:
		err = s.demote(c, index)
	case c.Op == opTransfer:
		err = s.transfer(c, index)
	case c.Op == opFailover:
		err = s.failover(c, index)
	case c.Op == opMarkOutdated:
		err = s.markOutdated(c)
	case c.Op == opSetDisk:
		err = s.setDisk(c)
	case c.Op == opAckSeq:
		err = s.ackSeq(c)
	case c.Op == opReportReady:
		err = s.reportReady(c, at)
	default:
		err = fmt.Errorf("%w: unknown op %q", ErrInvalidCommand, c.Op)
	}
	if err != nil {
		subject := c.Node
		if subject == "" {
			subject = c.By
		}
		return s.Epoch, fmt.Errorf("%s %s: %w", c.Op, subject, err)
	}
	return s.Epoch, nil
}

// authorize checks that the member that sent c may give it
// (docs/design.md, "Security"): a host joins as itself in the role its
// certificate names; only a member may act; the operator's commands
// (promote, demote, remove, and a failover, which only chooses the
// uptodate host) may come from any member, the witness too; a command a
// primary gives (mark-outdated, transfer, set-disk) only from that
// primary; a report about a host (readiness; an acknowledged sequence
// number, which the primary may also report) only from that host. So a
// witness never speaks for a data host. Entries without a sender predate
// the stamping and are applied as they were.
func (s *VolumeState) authorize(c command) error {
	from := c.Sender
	if from == "" {
		return nil
	}
	deny := func(why string) error {
		role := "data host"
		if c.SenderWitness {
			role = "witness"
		}
		return fmt.Errorf("%w: %s %s %s", ErrNotAuthorized, role, from, why)
	}
	if c.Op == opRegister {
		if c.Node != from || c.Witness != c.SenderWitness {
			return deny(fmt.Sprintf("may not register %q (witness %t): a host joins as itself, in its certificate's role", c.Node, c.Witness))
		}
		return nil
	}
	i, ok := s.find(from)
	if !ok {
		return deny("is not a member")
	}
	if s.Hosts[i].Witness != c.SenderWitness {
		return deny(fmt.Sprintf("is registered with witness=%t", s.Hosts[i].Witness))
	}
	switch c.Op {
	case opPromote, opDemote, opRemove, opFailover:
		return nil
	case opMarkOutdated, opTransfer:
		if c.By != from {
			return deny(fmt.Sprintf("may not act for primary %q", c.By))
		}
	case opSetDisk:
		if err := s.checkEpoch(c.Epoch); err != nil {
			return err
		}
		if from != s.Primary {
			return deny(fmt.Sprintf("may not report disk states: only the primary of epoch %d (%q) does", s.Epoch, s.Primary))
		}
	case opAckSeq:
		if c.Node != from && (from != s.Primary || c.Epoch != s.Epoch) {
			return deny(fmt.Sprintf("may not report what %q acknowledged: only that host or the primary does", c.Node))
		}
	case opReportReady:
		if c.Node != from {
			return deny(fmt.Sprintf("may not report %q's readiness", c.Node))
		}
	}
	return nil
}

// dataHost returns the index of the data host id.
func (s *VolumeState) dataHost(id string) (int, error) {
	i, ok := s.find(id)
	if !ok {
		return 0, fmt.Errorf("%w %q", ErrUnknownNode, id)
	}
	if s.Hosts[i].Witness {
		return 0, fmt.Errorf("%w: %q holds no volume", ErrWitness, id)
	}
	return i, nil
}

// dataHostIn returns the index of data host id for a report made in epoch
// e, which must be current.
func (s *VolumeState) dataHostIn(id string, e Epoch) (int, error) {
	if err := s.checkEpoch(e); err != nil {
		return 0, err
	}
	return s.dataHost(id)
}

func (s *VolumeState) checkEpoch(e Epoch) error {
	if e != s.Epoch {
		return fmt.Errorf("%w: command for epoch %d, current epoch is %d", ErrStaleEpoch, e, s.Epoch)
	}
	return nil
}

// checkPrimary verifies that by is the primary of epoch e.
func (s *VolumeState) checkPrimary(by string, e Epoch) error {
	if err := s.checkEpoch(e); err != nil {
		return err
	}
	if s.Primary == "" || by != s.Primary {
		return s.notPrimary(by)
	}
	return nil
}

func (s *VolumeState) notPrimary(by string) error {
	return fmt.Errorf("%w: %q is not primary in epoch %d (primary is %q)", ErrNotPrimary, by, s.Epoch, s.Primary)
}

// primaryActsOn checks that c.By is primary in c.Epoch and returns the index
// of c.Node, the other data host it acts on.
func (s *VolumeState) primaryActsOn(c command) (int, error) {
	if err := s.checkPrimary(c.By, c.Epoch); err != nil {
		return 0, err
	}
	i, err := s.dataHost(c.Node)
	if err != nil {
		return 0, err
	}
	if c.Node == c.By {
		return 0, fmt.Errorf("%w: %q is the primary itself", ErrInvalidCommand, c.Node)
	}
	return i, nil
}

// grant makes node primary (none if "") in a new epoch begun by the entry
// at index.
func (s *VolumeState) grant(node string, index uint64) {
	s.Primary = node
	s.Epoch++
	s.EpochIndex = index
}

// setDiskAt changes host i's disk state, noting the epoch of the change.
func (s *VolumeState) setDiskAt(i int, d DiskState) {
	if s.Hosts[i].Disk != d {
		s.Hosts[i].Disk = d
		s.Hosts[i].DiskEpoch = s.Epoch
	}
}

// outdate marks data host id outdated if it was uptodate: a displaced
// primary may hold writes it never shipped, and a host that is not the
// forced primary may hold writes the new primary never had. Inconsistent
// stays inconsistent: it is the worse state.
func (s *VolumeState) outdate(id string) {
	if i, ok := s.find(id); ok && !s.Hosts[i].Witness && s.Hosts[i].Disk == DiskUpToDate {
		s.setDiskAt(i, DiskOutdated)
	}
}

func (s *VolumeState) register(c command) error {
	if err := validNodeID(c.Node); err != nil {
		return err
	}
	i, ok := s.find(c.Node)
	if ok {
		// Joining twice is a retry, not an error; changing kind is.
		if s.Hosts[i].Witness != c.Witness {
			return fmt.Errorf("%w: %q is already registered with witness=%t", ErrInvalidCommand, c.Node, s.Hosts[i].Witness)
		}
		return nil
	}
	h := HostState{ID: c.Node, Witness: c.Witness, Disk: DiskInconsistent, DiskEpoch: s.Epoch}
	if c.Witness {
		h.Disk = DiskDiskless
	} else if len(s.DataHosts()) >= 2 {
		return ErrClusterFull
	}
	s.Hosts = slices.Insert(s.Hosts, i, h)
	return nil
}

func (s *VolumeState) remove(c command) error {
	if c.Node == s.Primary && c.Node != "" {
		return ErrIsPrimary
	}
	if i, ok := s.find(c.Node); ok {
		s.Hosts = slices.Delete(s.Hosts, i, i+1)
	}
	return nil
}

// promote makes c.Node primary. An existing primary is displaced and marked
// outdated: it may hold writes it never shipped. That is safe because the
// new epoch fences it: its frames are refused and its MarkOutdated fails.
// Without a primary there were no writes since the last one stepped down,
// so an uptodate peer stays uptodate.
func (s *VolumeState) promote(c command, index uint64, at time.Time) error {
	i, err := s.dataHost(c.Node)
	if err != nil {
		return err
	}
	if s.Primary == c.Node {
		return nil // a retry of a promotion that already happened
	}
	disk := s.Hosts[i].Disk
	if disk != DiskUpToDate {
		if !c.Force {
			return fmt.Errorf("%w: %q is %s (resync it, or force with a reason to accept data loss)", ErrNotUpToDate, c.Node, disk)
		}
		if c.Reason == "" {
			return fmt.Errorf("%w: a forced promotion needs a reason", ErrInvalidCommand)
		}
	}
	displaced := s.Primary
	s.grant(c.Node, index)
	s.outdate(displaced)
	if disk != DiskUpToDate {
		// The forced host's data becomes the truth; every other copy may
		// diverge from it.
		s.ForcedPromotions++
		s.LastForced = ForcedPromotion{Node: c.Node, Reason: c.Reason, Disk: disk, Epoch: s.Epoch, Index: index, At: at.UTC()}
		s.setDiskAt(i, DiskUpToDate)
		for _, h := range s.Hosts {
			if h.ID != c.Node {
				s.outdate(h.ID)
			}
		}
	}
	return nil
}

func (s *VolumeState) demote(c command, index uint64) error {
	if err := s.checkPrimary(c.Node, c.Epoch); err != nil {
		return err
	}
	s.grant("", index)
	return nil
}

// transfer is the last step of an orderly swap: the primary c.By has drained
// and flushed, so both copies are equal and neither is outdated.
func (s *VolumeState) transfer(c command, index uint64) error {
	i, err := s.primaryActsOn(c)
	if err != nil {
		return err
	}
	if d := s.Hosts[i].Disk; d != DiskUpToDate {
		return fmt.Errorf("%w: %q is %s", ErrNotUpToDate, c.Node, d)
	}
	s.grant(c.Node, index)
	return nil
}

// failover is the agent's hook: replace the primary c.By of epoch c.Epoch
// (or no primary, c.By == "") with the uptodate data host. The epoch check
// makes two agents racing for the same failure promote only once.
func (s *VolumeState) failover(c command, index uint64) error {
	if err := s.checkEpoch(c.Epoch); err != nil {
		return err
	}
	if c.By != s.Primary {
		return s.notPrimary(c.By)
	}
	for _, h := range s.Hosts {
		// Hosts is sorted, so the choice is the same on every member.
		if h.ID != s.Primary && !h.Witness && h.Disk == DiskUpToDate {
			displaced := s.Primary
			s.grant(h.ID, index)
			s.outdate(displaced)
			return nil
		}
	}
	return fmt.Errorf("%w: no other data host is uptodate", ErrNotUpToDate)
}

// markOutdated is how a primary that lost its peer keeps the right to
// acknowledge writes alone (docs/invariants.md, invariant 4).
func (s *VolumeState) markOutdated(c command) error {
	i, err := s.primaryActsOn(c)
	if err != nil {
		return err
	}
	if s.Hosts[i].Disk == DiskUpToDate {
		s.setDiskAt(i, DiskOutdated)
	}
	return nil
}

// setDisk records a disk state reported in c.Epoch: uptodate after a resync,
// inconsistent when one starts. The primary's disk must stay uptodate, so
// that "primary" always means "holds every acknowledged write".
func (s *VolumeState) setDisk(c command) error {
	i, err := s.dataHostIn(c.Node, c.Epoch)
	if err != nil {
		return err
	}
	if !c.Disk.valid() {
		return fmt.Errorf("%w: disk state %q (want uptodate, outdated or inconsistent)", ErrInvalidCommand, c.Disk)
	}
	if c.Node == s.Primary && c.Disk != DiskUpToDate {
		return fmt.Errorf("%w: %q is primary; demote it or fail over before marking it %s", ErrInvalidCommand, c.Node, c.Disk)
	}
	s.setDiskAt(i, c.Disk)
	return nil
}

// ackSeq records a host's acknowledged sequence number. Reports can race, so
// within an epoch the highest wins; a new epoch starts afresh.
func (s *VolumeState) ackSeq(c command) error {
	i, err := s.dataHostIn(c.Node, c.Epoch)
	if err != nil {
		return err
	}
	h := &s.Hosts[i]
	if h.AckedEpoch != c.Epoch || c.Seq > h.AckedSeq {
		h.AckedSeq, h.AckedEpoch = c.Seq, c.Epoch
	}
	return nil
}

// reportReady records a data host's own readiness to serve, as its LDAP
// agent judged it. It needs no epoch: readiness is a fact about the host,
// not about a tenure. ReadySince moves only when Ready changes, so it says
// how long the host has been (not) ready.
func (s *VolumeState) reportReady(c command, at time.Time) error {
	i, err := s.dataHost(c.Node)
	if err != nil {
		return err
	}
	if len(c.Detail) > MaxReadyDetail {
		return fmt.Errorf("%w: readiness detail of %d bytes exceeds %d", ErrInvalidCommand, len(c.Detail), MaxReadyDetail)
	}
	h := &s.Hosts[i]
	if h.ReadySince.IsZero() || h.Ready != c.Ready {
		h.ReadySince = at.UTC()
	}
	h.Ready, h.ReadyDetail = c.Ready, c.Detail
	return nil
}
