package main

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/ldmirror/ldmirror/cluster"
	"github.com/ldmirror/ldmirror/mirror"
	"github.com/ldmirror/ldmirror/node"
)

// sampleEvery is the sampler's period.
const sampleEvery = 100 * time.Millisecond

// sample is one host's status at one instant.
type sample struct {
	T           time.Time    `json:"t"`
	Host        string       `json:"host"`
	Err         string       `json:"err,omitempty"` // no answer (killed, stopped, starting)
	Role        cluster.Role `json:"role,omitempty"`
	Epoch       uint64       `json:"epoch,omitempty"`
	Serving     uint64       `json:"serving_epoch,omitempty"`
	Named       string       `json:"named_primary,omitempty"`
	Leader      string       `json:"raft_leader,omitempty"`
	Replication mirror.State `json:"replication,omitempty"`
	Link        node.Link    `json:"link,omitempty"`
	Export      bool         `json:"export,omitempty"`
	Lag         uint64       `json:"journal_lag_records,omitempty"`
	Dirty       uint64       `json:"dirty_blocks,omitempty"`
}

// primaryIn reports whether the sample shows a host serving as primary,
// and in which epoch.
func (s sample) primaryIn() (uint64, bool) {
	return s.Serving, s.Err == "" && s.Role == cluster.RolePrimary && s.Serving > 0
}

// sampler polls both data hosts' status every sampleEvery, keeps the
// samples for the round to take, and watches the invariant that no two
// hosts serve as primary in one epoch over the whole campaign. Close stops
// it and waits for it.
type sampler struct {
	fetch func(ctx context.Context, host string) (node.Status, error)
	stop  chan struct{}
	done  chan struct{}

	mu      sync.Mutex
	samples []sample
	// servers is, per epoch, each host seen serving as primary in it and
	// the sample that first showed it.
	servers map[uint64]map[string]sample
	splits  []string // two hosts seen serving in one epoch
}

func startSampler(fetch func(context.Context, string) (node.Status, error)) *sampler {
	s := &sampler{fetch: fetch, stop: make(chan struct{}), done: make(chan struct{}), servers: map[uint64]map[string]sample{}}
	go s.run()
	return s
}

func (s *sampler) run() {
	defer close(s.done)
	tick := time.NewTicker(sampleEvery)
	defer tick.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-tick.C:
		}
		// Both hosts at once: one that does not answer (stopped) must not
		// delay the other's sample.
		var wg sync.WaitGroup
		var got [2]sample
		for i, h := range dataHosts() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				got[i] = s.take(h)
			}()
		}
		wg.Wait()
		s.add(got[:]...)
	}
}

// take samples host once; it gives up after 300 ms, so that the period
// holds while a host does not answer.
func (s *sampler) take(host string) sample {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	t := time.Now()
	st, err := s.fetch(ctx, host)
	if err != nil {
		return sample{T: t, Host: host, Err: err.Error()}
	}
	return sample{T: t, Host: host, Role: st.Role, Epoch: st.Epoch, Serving: st.ServingEpoch, Named: st.NamedPrimary, Leader: st.RaftLeader,
		Replication: st.Replication, Link: st.Link, Export: st.Export != "", Lag: st.JournalLag, Dirty: st.DirtyBlocks}
}

func (s *sampler) add(got ...sample) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, g := range got {
		s.samples = append(s.samples, g)
		e, ok := g.primaryIn()
		if !ok {
			continue
		}
		m := s.servers[e]
		if m == nil {
			m = map[string]sample{}
			s.servers[e] = m
		}
		if _, seen := m[g.Host]; seen {
			continue
		}
		m[g.Host] = g
		if len(m) > 1 {
			var who []string
			for h, first := range m {
				who = append(who, fmt.Sprintf("%s (first seen %s)", h, first.T.Format("15:04:05.000")))
			}
			sort.Strings(who)
			s.splits = append(s.splits, fmt.Sprintf("epoch %d served by %v", e, who))
		}
	}
}

// drain returns the samples taken since the last drain.
func (s *sampler) drain() []sample {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.samples
	s.samples = nil
	return out
}

// splitBrains returns every epoch seen served by two hosts, from index
// from on.
func (s *sampler) splitBrains(from int) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if from >= len(s.splits) {
		return nil
	}
	return append([]string(nil), s.splits[from:]...)
}

// Close stops the sampler and waits for it.
func (s *sampler) Close() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
}
