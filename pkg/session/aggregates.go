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
	netns  event.Netns
	source netip.Addr
	reason event.Reason
}

// aggregates turns the kernel's cumulative per-source counts of events
// past the stream limit into one interval's aggregate records. Exact: per
// reason, the aggregates named plus "other" equal what the kernel counted
// past the limit, since start, at every interval.
type aggregates struct {
	sampled *probe.Sampler
	deltas  *event.Deltas[aggKey]
	named   event.Counts // what named aggregates reported, in all
	other   event.Counts // what "other" reported, in all
	last    time.Time
	batch   []event.Aggregate       // scratch
	idle    []probe.AggregatedCount // read, and idle since the previous read
}

// dropIdle removes the entries that counted nothing since the previous
// read from the kernel's map (probe.DropAggregated): a spoofed flood would
// otherwise leave it, and the deltas' copy of it, full of sources that
// counted once.
func (a *aggregates) dropIdle(p *probe.Probe) error {
	for _, c := range a.idle {
		a.deltas.Drop(aggKey{c.Netns, c.Source, c.Reason})
	}
	err := p.DropAggregated(a.idle)
	a.idle = a.idle[:0]
	return err
}

func newAggregates(p *probe.Probe, start time.Time) (*aggregates, error) {
	s, err := p.NewSampler(probe.AggregatedMap, Tick)
	if err != nil {
		return nil, err
	}
	return &aggregates{sampled: s, deltas: event.NewDeltas[aggKey](0), last: start}, nil
}

// sampler is the aggregated map's sampler; nil without a stream limit.
func (a *aggregates) sampler() *probe.Sampler {
	if a == nil {
		return nil
	}
	return a.sampled
}

// reported is every event reported in aggregates so far.
func (a *aggregates) reported() uint64 {
	if a == nil {
		return 0
	}
	var n uint64
	for t := range a.named {
		n += a.named[t] + a.other[t]
	}
	return n
}

// interval reads the kernel's aggregated counts and returns this
// interval's aggregates: the AggregatesShown largest per source, then an
// "other" per reason for the rest. "other" is what the totals have that no
// named aggregate had, since start: while events arrive between the two
// reads it may lag, never lead, and once they stop (at exit, after the
// probes are detached) it is exact.
func (a *aggregates) interval(p *probe.Probe, clock *event.Clock, now time.Time) ([]event.Aggregate, error) {
	// Totals first, then the map: the kernel counts in the opposite order
	// (bpf/stream.bpf.h), so no event is in "other" now and in a named
	// aggregate later.
	totals, err := p.AggregatedTotals()
	if err != nil {
		return nil, err
	}
	batch := a.batch[:0]
	sampling := uint64(1) << a.sampled.Shift()
	a.deltas.Begin()
	err = p.Aggregated(clock, func(c *probe.AggregatedCount) error {
		var count event.Counts
		count.Add(c.Reason, c.Count)
		d := a.deltas.Since(aggKey{c.Netns, c.Source, c.Reason}, count)
		if n := d.Of(c.Reason); n > 0 {
			batch = append(batch, event.Aggregate{Time: now, Interval: now.Sub(a.last), Reason: c.Reason, Netns: c.Netns,
				Source: c.Source, Count: n, Last: c.Last, Sampling: sampling})
		} else {
			a.idle = append(a.idle, *c)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	a.deltas.End()
	if err := a.dropIdle(p); err != nil {
		return nil, err
	}
	slices.SortFunc(batch, func(x, y event.Aggregate) int {
		return cmp.Or(cmp.Compare(y.Count, x.Count), x.Source.Compare(y.Source), cmp.Compare(x.Reason, y.Reason))
	})
	batch = batch[:min(len(batch), AggregatesShown)]
	for _, g := range batch {
		a.named.Add(g.Reason, g.Count)
	}
	for _, r := range event.Reasons() {
		if total, reported := totals.Of(r), a.named.Of(r)+a.other.Of(r); total > reported {
			a.other.Add(r, total-reported)
			batch = append(batch, event.Aggregate{Time: now, Interval: now.Sub(a.last), Reason: r, Count: total - reported, Sampling: sampling})
		}
	}
	a.last = now
	a.batch = batch
	return batch, nil
}
