package event

import (
	"net/netip"
	"time"
)

// Aggregate is a count of events that were not streamed one by one because
// the stream was at its limit (cttrace drops --stream-limit): how many of
// one reason one source had in one namespace during an interval. Source is
// invalid for the "other" aggregate: events of sources the kernel's
// bounded map could not hold, or past the aggregates shown per interval.
type Aggregate struct {
	Time     time.Time // end of the interval
	Interval time.Duration
	Reason   Reason
	Netns    uint32 // 0 for "other": any namespace shown
	Source   netip.Addr
	Count    uint64
	Last     time.Time // the source's latest event; zero for "other"
	// Sampling is 1 in how many new sources the kernel admitted to its map
	// of aggregated sources at the time (1: every source, exact).
	Sampling uint64
}

// IsOther reports whether a is the remainder no source is named for.
func (a *Aggregate) IsOther() bool { return !a.Source.IsValid() }
