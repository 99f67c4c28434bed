package top

import (
	"maps"
	"net/netip"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
)

// Recording is the Kernel of a replay (top-sources --replay): what a
// recorded stream (drops -o json or --events-file, cttrace's schema) says
// each source did, in place of the probes' maps. It counts as the kernel
// side does (bpf/accounting.bpf.h): by the flow's source,
// grouped, per namespace, with the totals per reason and per namespace kept
// apart from the bounded per-source map.
//
// The map is bounded like the kernel's: at capacity, the sources not seen
// since the previous read make room (the aggregator's history already holds
// their counts); past that a new source counts only in the totals, and in
// "other".
type Recording struct {
	g        Grouping
	capacity int
	sources  map[Key]*recorded
	read     uint32 // reads so far
	perNs    map[event.Netns]event.NamespaceCounts
}

type recorded struct {
	event.SourceCounts
	lastRead uint32 // the read count when it was last counted
}

// NewRecording returns an empty recording whose sources are grouped by g,
// holding at most capacity of them.
func NewRecording(g Grouping, capacity int) *Recording {
	return &Recording{g: g, capacity: max(capacity, 1), sources: map[Key]*recorded{},
		perNs: map[event.Netns]event.NamespaceCounts{}}
}

// Event counts one recorded event.
func (r *Recording) Event(ev *event.Event) {
	r.add(ev.Netns, ev.Flow.Src.Addr(), ev.Reason, ev.Detail, 1, ev.Time)
}

// Aggregate counts a recorded aggregate: its source's events past the
// stream limit, or (with no source) the rest of its reason's.
func (r *Recording) Aggregate(a *event.Aggregate) {
	r.add(a.Netns, a.Source, a.Reason, event.DetailNone, a.Count, a.Last)
}

func (r *Recording) add(netns event.Netns, src netip.Addr, reason event.Reason, detail event.Detail, n uint64, at time.Time) {
	if !reason.Valid() {
		return
	}
	// An "other" aggregate spans the namespaces shown: it counts under no
	// namespace (the zero Netns), in the totals and on no line.
	ns := r.perNs[netns]
	ns.Events.Add(reason, n)
	ns.Details.Add(detail, n)
	r.perNs[netns] = ns
	key := r.g.KeyFor(netns, src)
	if !key.Prefix.IsValid() {
		return
	}
	s := r.sources[key]
	if s == nil {
		if s = r.admit(key); s == nil {
			return
		}
	}
	s.lastRead = r.read
	s.Events.Add(reason, n)
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
	s := &recorded{SourceCounts: event.SourceCounts{Netns: key.Netns, Prefix: key.Prefix}}
	r.sources[key] = s
	return s
}

// Sources visits every source held, as a read of the kernel's map.
func (r *Recording) Sources(fn func(*event.SourceCounts) error) error {
	r.read++
	for _, s := range r.sources {
		if err := fn(&s.SourceCounts); err != nil {
			return err
		}
	}
	return nil
}

// NamespaceCounts are the recorded events per namespace.
func (r *Recording) NamespaceCounts() (map[event.Netns]event.NamespaceCounts, error) {
	return maps.Clone(r.perNs), nil
}
