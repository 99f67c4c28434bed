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

// idleReads is how many reads in a row must find an entry with nothing
// new before it is removed (top's idleReads says why).
const idleReads = 4

// dropIdle removes the entries that counted nothing lately from the
// kernel's map (probe.DropAggregated): a spoofed flood would otherwise
// leave it, and the deltas' copy of it, full of sources that counted once.
// What an entry counted between its read and its removal, where the kernel
// says, is added to this interval's batch.
func (a *aggregates) dropIdle(p *probe.Probe, clock *event.Clock, now time.Time, batch []event.Aggregate) ([]event.Aggregate, error) {
	sampling := uint64(1) << a.sampled.Shift()
	err := p.DropAggregated(a.idle, clock, func(c *probe.AggregatedCount) {
		var final event.Counts
		final.Add(c.Reason, c.Count)
		if n := a.deltas.Removed(aggKey{c.Netns, c.Source, c.Reason}, final).Of(c.Reason); n > 0 {
			batch = append(batch, a.aggregate(now, c, n, sampling))
		}
	})
	for _, c := range a.idle {
		a.deltas.Drop(aggKey{c.Netns, c.Source, c.Reason})
	}
	a.idle = a.idle[:0]
	return batch, err
}

// aggregate is the record of n events of c in the interval ending now.
func (a *aggregates) aggregate(now time.Time, c *probe.AggregatedCount, n, sampling uint64) event.Aggregate {
	return event.Aggregate{Time: now, Interval: now.Sub(a.last), Reason: c.Reason, Netns: c.Netns,
		Source: c.Source, Count: n, Last: c.Last, Sampling: sampling}
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
		key := aggKey{c.Netns, c.Source, c.Reason}
		d := a.deltas.Since(key, count)
		if n := d.Of(c.Reason); n > 0 {
			batch = append(batch, a.aggregate(now, c, n, sampling))
		} else if a.deltas.Quiet(key) >= idleReads {
			a.idle = append(a.idle, *c)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	a.deltas.End()
	if batch, err = a.dropIdle(p, clock, now, batch); err != nil {
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
