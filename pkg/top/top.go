// Package top turns the kernel's per-source counters into what an operator
// under attack asks: who is being refused, who fills the table, how fast.
// One Snapshot per interval; rates are differences between snapshots.
package top

import (
	"cmp"
	"net/netip"
	"slices"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/probe"
)

// Key is a source (or prefix) in one network namespace.
type Key struct {
	Netns  uint32
	Prefix netip.Prefix
}

// Counts are one source's totals since cttrace attached.
type Counts struct {
	Drops   uint64 // packets refused: table_full, alloc_failed, insert_failed
	Evicted uint64 // its entries evicted by early_drop or the gc
	Inserts uint64 // entries it got confirmed
	Deletes uint64 // its entries removed otherwise
}

// kernelIndex maps each reason to its index in SourceTotals.Events, once.
var kernelIndex = func() map[event.Reason]int {
	m := map[event.Reason]int{}
	for t := 1; event.ReasonFromKernel(uint32(t)) != ""; t++ {
		m[event.ReasonFromKernel(uint32(t))] = t
	}
	return m
}()

var (
	ixTableFull    = kernelIndex[event.ReasonTableFull]
	ixAllocFailed  = kernelIndex[event.ReasonAllocFailed]
	ixInsertFailed = kernelIndex[event.ReasonInsertFailed]
	ixEarlyDrop    = kernelIndex[event.ReasonEarlyDrop]
	ixInsert       = kernelIndex[event.ReasonInsert]
	ixDelete       = kernelIndex[event.ReasonDelete]
)

func countsOf(st *probe.SourceTotals) Counts {
	e := &st.Events
	return Counts{
		Drops:   e[ixTableFull] + e[ixAllocFailed] + e[ixInsertFailed],
		Evicted: e[ixEarlyDrop],
		Inserts: e[ixInsert],
		Deletes: e[ixDelete],
	}
}

func countsOfTotals(t map[event.Reason]uint64) Counts {
	return Counts{
		Drops:   t[event.ReasonTableFull] + t[event.ReasonAllocFailed] + t[event.ReasonInsertFailed],
		Evicted: t[event.ReasonEarlyDrop],
		Inserts: t[event.ReasonInsert],
		Deletes: t[event.ReasonDelete],
	}
}

func (c Counts) sub(o Counts) Counts {
	return Counts{c.Drops - o.Drops, c.Evicted - o.Evicted, c.Inserts - o.Inserts, c.Deletes - o.Deletes}
}

// atLeastZero is c - o, column by column, never below zero: the kernel's
// totals and its per-source map are read a moment apart.
func (c Counts) atLeastZero(o Counts) Counts {
	d := func(x, y uint64) uint64 { return x - min(x, y) }
	return Counts{d(c.Drops, o.Drops), d(c.Evicted, o.Evicted), d(c.Inserts, o.Inserts), d(c.Deletes, o.Deletes)}
}

// since is what a source counted since prev. A source pushed out of the
// kernel's LRU map and back starts again from zero: a count below the
// previous one is all new.
func (c Counts) since(prev Counts) Counts {
	d := func(now, before uint64) uint64 {
		if now < before {
			return now
		}
		return now - before
	}
	return Counts{d(c.Drops, prev.Drops), d(c.Evicted, prev.Evicted), d(c.Inserts, prev.Inserts), d(c.Deletes, prev.Deletes)}
}

func (c Counts) add(o Counts) Counts {
	return Counts{c.Drops + o.Drops, c.Evicted + o.Evicted, c.Inserts + o.Inserts, c.Deletes + o.Deletes}
}

// Row is one line of the view.
type Row struct {
	Key
	Total      Counts  // since start
	Rate       Counts  // in the last interval
	Held       int64   // entries it holds in the table now
	Share      float64 // Held / the namespace's entries, 0..1
	LastReason event.Reason
	LastDrop   time.Time
}

// PerSec is n events over an interval, per second (0 for no interval).
func PerSec(n uint64, interval time.Duration) float64 {
	if interval <= 0 {
		return 0
	}
	return float64(n) / interval.Seconds()
}

// Namespace is a network namespace's line in the header.
type Namespace struct {
	Netns   uint32
	Entries int64  // entries now (from the table), -1 when unknown
	Max     uint32 // nf_conntrack_max
	Total   Counts
	Rate    Counts
}

// Fill is Entries/Max, 0..1, or -1 when unknown.
func (n *Namespace) Fill() float64 {
	if n.Entries < 0 || n.Max == 0 {
		return -1
	}
	return float64(n.Entries) / float64(n.Max)
}

// Snapshot is one refresh of the view.
type Snapshot struct {
	Time       time.Time
	Interval   time.Duration
	Namespaces []Namespace
	Rows       []Row // sorted, at most the limit
	// Other holds what is not in Rows: sources past the limit, sources the
	// kernel map no longer tracks, events with no source. Rows + Other add
	// up to the kernel's totals, column by column.
	Other    Row
	Tracked  int // sources the kernel tracks now
	Capacity int // the most it can track (--max-sources)
	// Bounded says the bound was reached: some sources were pushed out and
	// are accounted in Other only.
	Bounded bool
	Lost    uint64 // events the kernel could not deliver, since start
}

// SortBy names a column to rank rows by.
type SortBy string

const (
	SortDrops   SortBy = "drops"
	SortInserts SortBy = "inserts"
	SortHeld    SortBy = "held"
)

// Options shape the view.
type Options struct {
	Sort     SortBy
	Limit    int
	Netns    map[uint32]bool // only these namespaces (empty: all)
	Capacity int
}

// Aggregator keeps what it needs between snapshots: the previous totals of
// each source the kernel tracks (so bounded by the kernel map's size) and
// the entries each held at start.
type Aggregator struct {
	opts      Options
	prev      map[Key]Counts
	cur       map[Key]Counts // reused between snapshots
	held      map[Key]int64  // seeded from the table at start
	seeded    int64          // entries held at start, in all
	prevTotal Counts
	last      time.Time
	evicted   bool
}

// New starts an aggregator; start is when the probes were attached.
func New(opts Options, start time.Time) *Aggregator {
	return &Aggregator{opts: opts, prev: map[Key]Counts{}, cur: map[Key]Counts{}, held: map[Key]int64{}, last: start}
}

// ResetHeld forgets the seeded entries, before seeding anew from a fresh
// dump: the tracepoint backend sees no inserts or deletes, so there the
// table is dumped again at every refresh instead.
func (a *Aggregator) ResetHeld() {
	clear(a.held)
	a.seeded = 0
}

// Seed records the entries a source held when cttrace attached.
func (a *Aggregator) Seed(k Key, entries int64) {
	a.held[k] += entries
	a.seeded += entries
}

// Source is one kernel source record, as probe.Probe.Sources returns it.
type Source = probe.SourceTotals

// Snapshot builds the view from the kernel's current per-source totals (all
// of them, visited once by each), its totals by reason over the namespaces
// shown (the host's when not filtered), and the namespaces' entry counts and
// max. totals is called after each, so that the kernel's totals are never
// behind the rows (they only grow).
func (a *Aggregator) Snapshot(now time.Time, each func(func(*Source) error) error, totals func() (map[event.Reason]uint64, error), tables map[uint32]Namespace) (Snapshot, error) {
	snap := Snapshot{Time: now, Interval: now.Sub(a.last), Capacity: a.opts.Capacity}
	a.last = now
	cur := a.cur
	clear(cur)
	best := shortlist{limit: a.opts.Limit, by: a.opts.Sort}
	var shown, hidden Row // sums over every row offered, and over those not shown
	nsIndex := a.namespaces(tables)
	err := each(func(st *Source) error {
		k := Key{Netns: st.Netns, Prefix: st.Prefix}
		c := countsOf(st)
		cur[k] = c
		snap.Tracked++
		if len(a.opts.Netns) > 0 && !a.opts.Netns[k.Netns] {
			return nil
		}
		r := Row{Key: k, Total: c, Rate: c.since(a.prev[k]), Held: a.heldNow(k, c), LastReason: st.LastDropReason, LastDrop: st.LastDrop}
		ns, ok := nsIndex[k.Netns]
		if !ok {
			ns = &Namespace{Netns: k.Netns, Entries: -1}
			nsIndex[k.Netns] = ns
		}
		ns.Total, ns.Rate = ns.Total.add(c), ns.Rate.add(r.Rate)
		shown.add(&r)
		if out, pushed := best.offer(r); pushed {
			hidden.add(&out)
		}
		return nil
	})
	if err != nil {
		return snap, err
	}
	// Sources that held entries at start but have had no event since are
	// not in the kernel's map; they still hold their entries.
	for k, n := range a.held {
		if _, ok := cur[k]; ok || (len(a.opts.Netns) > 0 && !a.opts.Netns[k.Netns]) {
			continue
		}
		r := Row{Key: k, Held: n}
		shown.add(&r)
		if out, pushed := best.offer(r); pushed {
			hidden.add(&out)
		}
	}
	// A source missing now but present before was pushed out of the LRU map.
	if !a.evicted {
		for k := range a.prev {
			if _, ok := cur[k]; !ok {
				a.evicted = true
				break
			}
		}
	}
	a.prev, a.cur = cur, a.prev
	snap.Bounded = a.evicted || (snap.Capacity > 0 && snap.Tracked >= snap.Capacity)
	for _, ns := range nsIndex {
		snap.Namespaces = append(snap.Namespaces, *ns)
	}
	slices.SortFunc(snap.Namespaces, func(x, y Namespace) int { return cmp.Compare(x.Netns, y.Netns) })
	snap.Rows = best.rows
	for i := range snap.Rows {
		if ns := nsIndex[snap.Rows[i].Netns]; ns != nil && ns.Entries > 0 {
			snap.Rows[i].Share = float64(snap.Rows[i].Held) / float64(ns.Entries)
		}
	}
	byReason, err := totals()
	if err != nil {
		return snap, err
	}
	// Other: everything the kernel counted (in the namespaces shown) that no
	// shown row holds.
	total := countsOfTotals(byReason)
	inRows := shown.Total.sub(hidden.Total)
	snap.Other = Row{Total: total.atLeastZero(inRows), Rate: total.since(a.prevTotal).atLeastZero(shown.Rate.sub(hidden.Rate))}
	// Held reconciles like the counts: what the table held at start plus
	// what came minus what went, less what the shown rows hold.
	snap.Other.Held = a.seeded + int64(total.Inserts) - int64(total.Deletes) - int64(total.Evicted)
	for _, r := range snap.Rows {
		snap.Other.Held -= r.Held
	}
	a.prevTotal = total
	return snap, nil
}

// namespaces starts the header with every namespace the table reader
// found (filtered), so a namespace shows even before its first event.
func (a *Aggregator) namespaces(tables map[uint32]Namespace) map[uint32]*Namespace {
	idx := map[uint32]*Namespace{}
	for id, t := range tables {
		if len(a.opts.Netns) == 0 || a.opts.Netns[id] {
			ns := Namespace{Netns: id, Entries: t.Entries, Max: t.Max}
			idx[id] = &ns
		}
	}
	return idx
}

// shortlist keeps the best limit rows seen so far, in rank order: the view
// shows a few rows of possibly a million sources, so the rest is never
// sorted or kept.
type shortlist struct {
	limit int
	by    SortBy
	rows  []Row
}

// offer adds r if it ranks among the best; it returns the row that left
// the list (r itself when r does not make it) and whether one did.
func (s *shortlist) offer(r Row) (Row, bool) {
	if s.limit <= 0 {
		s.rows = append(s.rows, r)
		return Row{}, false
	}
	if len(s.rows) == s.limit && compareRows(r, s.rows[len(s.rows)-1], s.by) >= 0 {
		return r, true
	}
	i, _ := slices.BinarySearchFunc(s.rows, r, func(x, y Row) int { return compareRows(x, y, s.by) })
	s.rows = slices.Insert(s.rows, i, r)
	if len(s.rows) > s.limit {
		out := s.rows[len(s.rows)-1]
		s.rows = s.rows[:s.limit]
		return out, true
	}
	return Row{}, false
}

// add sums r's counts, rates and held entries into s.
func (s *Row) add(r *Row) {
	s.Total, s.Rate, s.Held = s.Total.add(r.Total), s.Rate.add(r.Rate), s.Held+r.Held
}

// heldNow is what source k holds: its entries at start plus what it got
// confirmed, less what it lost. Never below zero: a source pushed out of
// the kernel's map loses the inserts its later deletes balance.
func (a *Aggregator) heldNow(k Key, c Counts) int64 {
	return max(0, a.held[k]+int64(c.Inserts)-int64(c.Evicted)-int64(c.Deletes))
}

// compareRows orders rows by the chosen column, the interval's rate first,
// then the total, then netns and prefix so the order is stable between
// refreshes.
func compareRows(a, b Row, by SortBy) int {
	var c int
	switch by {
	case SortInserts:
		c = cmp.Or(cmp.Compare(b.Rate.Inserts, a.Rate.Inserts), cmp.Compare(b.Total.Inserts, a.Total.Inserts))
	case SortHeld:
		c = cmp.Compare(b.Held, a.Held)
	default:
		c = cmp.Or(cmp.Compare(b.Rate.Drops, a.Rate.Drops), cmp.Compare(b.Total.Drops, a.Total.Drops))
	}
	if c != 0 {
		return c
	}
	return cmp.Or(cmp.Compare(a.Netns, b.Netns), a.Prefix.Addr().Compare(b.Prefix.Addr()))
}
