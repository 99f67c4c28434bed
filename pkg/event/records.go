package event

import (
	"net/netip"
	"time"
)

// The records of a stream besides events: what `cttrace drops` writes, an
// events file keeps and a replay reads back (pkg/output's Record holds one
// of each kind).

// Aggregate is a count of events that were not streamed one by one because
// the stream was at its limit (--stream-limit): how many of one reason one
// source had in one namespace during an interval. "Aggregate" means this
// everywhere in cttrace: the kernel counts events past the limit per source
// (bpf/stream.bpf.h), and user space reports them as aggregates. Source is
// invalid for the "other" aggregate: events of sources the kernel's bounded
// map could not hold, or past the aggregates shown per interval.
type Aggregate struct {
	Time     time.Time // end of the interval
	Interval time.Duration
	Reason   Reason
	Netns    Netns // zero for "other": any namespace shown
	Source   netip.Addr
	Count    uint64
	Last     time.Time // the source's latest event; zero for "other"
	// Sampling is 1 in how many new sources the kernel admitted to its map
	// of aggregated sources at the time (1: every source, exact).
	Sampling uint64
}

// IsOther reports whether a is the remainder no source is named for.
func (a *Aggregate) IsOther() bool { return !a.Source.IsValid() }

// Lost reports events the kernel side could not deliver: its ring buffer
// was full, or the kernel skipped a run of its programs.
type Lost struct {
	Time  time.Time // when it was noticed
	Lost  uint64    // since the previous report
	Total uint64    // since the start
}

// Summary is what a run saw, reported once at its end.
type Summary struct {
	Time    time.Time // when the run ended
	Backend string    // the probe backend used (fentry, kprobe, tracepoint)
	// Events counts every event the kernel produced, streamed or not.
	Events Counts
	// Visible lists the reasons the backend can see at all: a 0 in Events
	// for a reason not listed means "not visible", not "none happened".
	Visible []Reason
	Lost    uint64 // events the kernel could not deliver, in all
	// Aggregated is the events reported in aggregates (past the stream
	// limit) rather than one by one, in all.
	Aggregated uint64
	Duration   time.Duration
}

// Sees reports whether the run could see events of reason r.
func (s *Summary) Sees(r Reason) bool {
	for _, v := range s.Visible {
		if v == r {
			return true
		}
	}
	return false
}

// Record is one record of a stream: exactly one of its pointers is set.
// `cttrace drops` writes them, an events file keeps them, and a replay
// reads them back (pkg/output encodes and decodes them).
type Record struct {
	// Host is the machine that wrote the record, for a recording read
	// back; empty for this machine's own records.
	Host      string
	Event     *Event
	Aggregate *Aggregate
	Lost      *Lost
	Summary   *Summary
}

// Time is when the record was written: the event's, the end of the
// aggregate's interval, the loss's notice, the summary's.
func (r *Record) Time() time.Time {
	switch {
	case r.Event != nil:
		return r.Event.Time
	case r.Aggregate != nil:
		return r.Aggregate.Time
	case r.Lost != nil:
		return r.Lost.Time
	case r.Summary != nil:
		return r.Summary.Time
	}
	return time.Time{}
}
