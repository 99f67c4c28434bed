package event

import (
	"net/netip"
	"time"
)

// Counts are events counted by reason: the one shape every total in
// cttrace takes, from the kernel's maps (indexed by enum ct_event_type, so
// they convert with no mapping) to the views. What "drops" and
// "evictions" add up is Reason.IsDrop's and Reason.IsEviction's to say.
type Counts [len(kernelReasons)]uint64

// CountsFromKernel takes a kernel array indexed by enum ct_event_type. The
// ABI test in pkg/probe holds the two lengths equal.
func CountsFromKernel(byType [len(kernelReasons)]uint64) Counts { return Counts(byType) }

// Of is the count of reason r (0 for a reason cttrace does not know).
func (c Counts) Of(r Reason) uint64 { return c[r.KernelType()] }

// Add counts n events of reason r; a reason cttrace does not know is not
// counted.
func (c *Counts) Add(r Reason, n uint64) {
	if t := r.KernelType(); t != 0 {
		c[t] += n
	}
}

// Drops are the packets refused (Reason.IsDrop): what the kernel counts as
// `drop` and `insert_failed`.
func (c Counts) Drops() uint64 { return c.sumIf(Reason.IsDrop) }

// Evictions are the entries evicted (Reason.IsEviction): by early_drop()
// for a new flow, or by the gc worker under pressure.
func (c Counts) Evictions() uint64 { return c.sumIf(Reason.IsEviction) }

func (c Counts) sumIf(is func(Reason) bool) uint64 {
	var n uint64
	for t, r := range kernelReasons {
		if t != 0 && is(r) {
			n += c[t]
		}
	}
	return n
}

// Plus is c + o, reason by reason.
func (c Counts) Plus(o Counts) Counts {
	for t := range c {
		c[t] += o[t]
	}
	return c
}

// Minus is c - o, reason by reason, never below zero: counters read a
// moment apart may be behind each other.
func (c Counts) Minus(o Counts) Counts {
	for t := range c {
		c[t] -= min(c[t], o[t])
	}
	return c
}

// Since is what a cumulative counter did since prev was read. A count below
// prev's was reset in between (pushed out of a kernel LRU map and admitted
// again): all of it is new.
func (c Counts) Since(prev Counts) Counts {
	for t := range c {
		if c[t] >= prev[t] {
			c[t] -= prev[t]
		}
	}
	return c
}

// IsZero reports whether nothing was counted.
func (c Counts) IsZero() bool { return c == Counts{} }

// ByReason is c as a map, every reason cttrace knows a key (for encoders
// that want names).
func (c Counts) ByReason() map[Reason]uint64 {
	m := make(map[Reason]uint64, len(kernelReasons)-1)
	for t, r := range kernelReasons {
		if t != 0 {
			m[r] = c[t]
		}
	}
	return m
}

// DetailCounts are events counted by detail, indexed by enum ct_detail;
// each detail belongs to one reason (Detail.Reason), and a reason's events
// without a detail are its count less its details'.
type DetailCounts [len(kernelDetails)]uint64

// Of is the count of detail d.
func (c DetailCounts) Of(d Detail) uint64 {
	for i, k := range kernelDetails {
		if k == d {
			return c[i]
		}
	}
	return 0
}

// Add counts n events of detail d (DetailNone is not counted: a reason's
// events without a detail are its count less its details').
func (c *DetailCounts) Add(d Detail, n uint64) {
	for i, k := range kernelDetails {
		if i != 0 && k == d {
			c[i] += n
		}
	}
}

// NamespaceCounts are one network namespace's events since the probes
// were attached: by reason (exact, whatever the per-source bound) and by
// detail.
type NamespaceCounts struct {
	Events  Counts
	Details DetailCounts
}

// SourceCounts is what the kernel counted for one source (or prefix) in one
// network namespace since the probes were attached.
// SourceKey names one source, or prefix of sources, of one namespace: an
// entry of the kernel's per-source map.
type SourceKey struct {
	Netns  Netns
	Prefix netip.Prefix
}

type SourceCounts struct {
	Netns          Netns
	Prefix         netip.Prefix
	Events         Counts
	LastDrop       time.Time
	LastDropReason Reason
}

// Deltas turns the cumulative counters of a bounded kernel LRU map, read
// again and again, into what each key did since the previous read. A key
// missing from one read and back in a later one, or whose counts went down,
// was pushed out of the map and admitted again: all of its count is new.
// One Deltas serves each map (the per-source counts of top-sources, the
// aggregates past the stream limit); it holds one entry per key of the
// last read, so it is bounded by the map.
type Deltas[K comparable] struct {
	last map[K]deltaRead
	gen  uint32
}

type deltaRead struct {
	counts Counts
	gen    uint32
	quiet  uint32 // reads in a row that found nothing new
}

// NewDeltas returns a Deltas sized for capacity keys. The kernel's maps
// hold few keys while their heavy-hitter sketch holds a flood's sources
// back (bpf/sketch.bpf.h), so the ranking starts small and grows with the
// map: sized for a whole map of 65,536, it was 18 MB of an idle
// top-sources' 40 MB peak.
func NewDeltas[K comparable](capacity int) *Deltas[K] {
	return &Deltas[K]{last: make(map[K]deltaRead, max(capacity, 0))}
}

// Begin starts a read of the map.
func (d *Deltas[K]) Begin() { d.gen++ }

// Since records k's counts in this read and returns what it did since the
// previous one.
func (d *Deltas[K]) Since(k K, now Counts) Counts {
	prev, seen := d.last[k]
	if !seen || prev.gen != d.gen-1 {
		d.last[k] = deltaRead{counts: now, gen: d.gen}
		return now // new, or gone from the map for a read and back
	}
	r := deltaRead{counts: now, gen: d.gen}
	delta := now.Since(prev.counts)
	if delta.IsZero() {
		r.quiet = prev.quiet + 1
	}
	d.last[k] = r
	return delta
}

// Quiet is how many reads in a row found k with nothing new, up to this
// one.
func (d *Deltas[K]) Quiet(k K) uint32 { return d.last[k].quiet }

// Removed forgets k, which the caller removed from the map holding final,
// and returns what k did between its last read and the removal.
func (d *Deltas[K]) Removed(k K, final Counts) Counts {
	prev, seen := d.last[k]
	delete(d.last, k)
	if !seen {
		return final
	}
	return final.Since(prev.counts)
}

// Forget drops the keys match says, whose counts the map no longer holds
// for another reason than being pushed out (their namespace died): the
// next read does not count them as gone.
func (d *Deltas[K]) Forget(match func(K) bool) {
	for k := range d.last {
		if match(k) {
			delete(d.last, k)
		}
	}
}

// Drop forgets k, which the caller removed from the map itself: the next
// read does not count it as pushed out, and counts it from zero if it
// comes back.
func (d *Deltas[K]) Drop(k K) { delete(d.last, k) }

// End finishes a read and returns how many keys of the previous read were
// not in it: pushed out of the LRU map.
func (d *Deltas[K]) End() (gone int) {
	for k, r := range d.last {
		if r.gen != d.gen {
			delete(d.last, k)
			gone++
		}
	}
	return gone
}
