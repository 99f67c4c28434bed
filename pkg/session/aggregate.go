package session

import (
	"cmp"
	"net/netip"
	"slices"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/probe"
)

// AggregatesShown is how many per-source aggregates each interval names at
// most; the rest of the interval's aggregated events go into one "other"
// aggregate per reason. Together with the stream limit this bounds what a
// flood writes: the limit's events, plus at most this many aggregate
// records and one per reason, a second.
const AggregatesShown = 20

// aggKey is one (namespace, source, reason) the kernel aggregates.
type aggKey struct {
	netns  uint32
	source netip.Addr
	reason event.Reason
}

type aggRead struct {
	count uint64
	gen   uint32
}

// aggregator turns the kernel's cumulative per-source counts of events
// past the stream limit into one interval's aggregate records. Exact: per
// reason, the aggregates named plus "other" equal what the kernel counted
// past the limit, since start, at every interval.
type aggregator struct {
	sampler *probe.Sampler
	read    map[aggKey]aggRead // last read of each map entry
	gen     uint32
	named   map[event.Reason]uint64 // what named aggregates reported, in all
	other   map[event.Reason]uint64 // what "other" reported, in all
	last    time.Time
	batch   []event.Aggregate // scratch
}

func newAggregator(p *probe.Probe, start time.Time) (*aggregator, error) {
	s, err := p.NewSampler(probe.AggregatedMap, Tick)
	if err != nil {
		return nil, err
	}
	return &aggregator{sampler: s, read: map[aggKey]aggRead{}, named: map[event.Reason]uint64{},
		other: map[event.Reason]uint64{}, last: start}, nil
}

// interval reads the kernel's aggregated counts and returns this
// interval's aggregates: the AggregatesShown largest per source, then an
// "other" per reason for the rest. "other" is what the totals have that no
// named aggregate had, since start: while events arrive between the two
// reads it may lag, never lead, and once they stop (at exit, after the
// probes are detached) it is exact.
func (a *aggregator) interval(p *probe.Probe, clock *event.Clock, now time.Time) ([]event.Aggregate, error) {
	// Totals first, then the map: the kernel counts in the opposite order
	// (bpf/cttrace.bpf.c, aggregate_event), so no event is in "other" now
	// and in a named aggregate later.
	totals, err := p.AggregatedTotals()
	if err != nil {
		return nil, err
	}
	a.gen++
	batch := a.batch[:0]
	sampling := uint64(1) << a.sampler.Shift()
	err = p.Aggregated(clock, func(c *probe.AggregatedCount) error {
		k := aggKey{c.Netns, c.Source, c.Reason}
		prev, seen := a.read[k]
		a.read[k] = aggRead{count: c.Count, gen: a.gen}
		if seen && prev.gen != a.gen-1 || c.Count < prev.count {
			prev = aggRead{} // pushed out of the map and back: all new
		}
		if d := c.Count - prev.count; d > 0 {
			batch = append(batch, event.Aggregate{Time: now, Interval: now.Sub(a.last), Reason: c.Reason, Netns: c.Netns,
				Source: c.Source, Count: d, Last: c.Last, Sampling: sampling})
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for k, r := range a.read {
		if r.gen != a.gen {
			delete(a.read, k)
		}
	}
	slices.SortFunc(batch, func(x, y event.Aggregate) int {
		return cmp.Or(cmp.Compare(y.Count, x.Count), x.Source.Compare(y.Source), cmp.Compare(x.Reason, y.Reason))
	})
	batch = batch[:min(len(batch), AggregatesShown)]
	for _, g := range batch {
		a.named[g.Reason] += g.Count
	}
	for _, r := range event.Reasons() {
		if rest := totals[r] - a.named[r] - a.other[r]; totals[r] > a.named[r]+a.other[r] {
			a.other[r] += rest
			batch = append(batch, event.Aggregate{Time: now, Interval: now.Sub(a.last), Reason: r, Count: rest, Sampling: sampling})
		}
	}
	a.last = now
	a.batch = batch
	return batch, nil
}
