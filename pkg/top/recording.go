package top

import (
	"maps"
	"net/netip"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/topk"
)

// Recording is the Kernel of a replay (top-sources --replay): what a
// recorded stream (drops -o json or --events-file, cttrace's schema) says
// each source did, in place of the probes' maps. It counts as the kernel
// side does (account_source in bpf/cttrace.bpf.c): by the flow's source,
// grouped, per namespace, with the totals per reason and per namespace kept
// apart from the bounded per-source map.
//
// The map is bounded like the kernel's: at capacity, the sources not seen
// since the previous read make room (the aggregator's history already holds
// their counts); past that a new source counts only in the totals, and in
// "other".
type Recording struct {
	g        topk.Grouping
	capacity int
	sources  map[Key]*recorded
	read     uint32 // reads so far
	totals   map[event.Reason]uint64
	perNs    map[uint32]map[event.Reason]uint64
}

type recorded struct {
	Source
	lastRead uint32 // the read count when it was last counted
}

// NewRecording returns an empty recording whose sources are grouped by g,
// holding at most capacity of them.
func NewRecording(g topk.Grouping, capacity int) *Recording {
	return &Recording{g: g, capacity: max(capacity, 1), sources: map[Key]*recorded{},
		totals: map[event.Reason]uint64{}, perNs: map[uint32]map[event.Reason]uint64{}}
}

// Event counts one recorded event.
func (r *Recording) Event(ev *event.Event) {
	r.add(ev.Netns, ev.Flow.Src.Addr(), ev.Reason, 1, ev.Time)
}

// Aggregate counts a recorded aggregate: its source's events past the
// stream limit, or (with no source) the rest of its reason's.
func (r *Recording) Aggregate(a *event.Aggregate) {
	r.add(a.Netns, a.Source, a.Reason, a.Count, a.Last)
}

func (r *Recording) add(netns uint32, src netip.Addr, reason event.Reason, n uint64, at time.Time) {
	r.totals[reason] += n
	if netns != 0 { // an "other" aggregate spans the namespaces shown
		if r.perNs[netns] == nil {
			r.perNs[netns] = map[event.Reason]uint64{}
		}
		r.perNs[netns][reason] += n
	}
	t := reason.KernelType()
	key := r.g.KeyFor(netns, src)
	if t == 0 || !key.Prefix.IsValid() {
		return
	}
	s := r.sources[key]
	if s == nil {
		if s = r.admit(key); s == nil {
			return
		}
	}
	s.lastRead = r.read
	s.Events[t] += n
	if reason.IsDrop() && !at.Before(s.LastDrop) {
		s.LastDrop, s.LastDropReason = at, reason
	}
}

// admit makes room for key, as the kernel's LRU map would, or returns nil.
func (r *Recording) admit(key Key) *recorded {
	if len(r.sources) >= r.capacity {
		for k, s := range r.sources {
			if s.lastRead < r.read {
				delete(r.sources, k)
			}
		}
		if len(r.sources) >= r.capacity {
			return nil
		}
	}
	s := &recorded{Source: Source{Netns: key.Netns, Prefix: key.Prefix}}
	r.sources[key] = s
	return s
}

// Sources visits every source held, as a read of the kernel's map.
func (r *Recording) Sources(fn func(*Source) error) error {
	r.read++
	for _, s := range r.sources {
		if err := fn(&s.Source); err != nil {
			return err
		}
	}
	return nil
}

// Totals are the recorded events by reason.
func (r *Recording) Totals() (map[event.Reason]uint64, error) { return maps.Clone(r.totals), nil }

// NamespaceTotals are the recorded events per namespace, by reason.
func (r *Recording) NamespaceTotals() (map[uint32]map[event.Reason]uint64, error) {
	out := make(map[uint32]map[event.Reason]uint64, len(r.perNs))
	for ns, byReason := range r.perNs {
		out[ns] = maps.Clone(byReason)
	}
	return out, nil
}
