// Package top turns the kernel's per-source counters into what an operator
// under attack asks: who is being refused, who fills the table, how fast.
// One Snapshot per interval; rates are differences between snapshots.
package top

import (
	"cmp"
	"slices"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/probe"
	"github.com/cttrace/cttrace/pkg/topk"
)

// Key is a source (or prefix) in one network namespace: the history's.
type Key = topk.Key

// Counts are one source's totals since cttrace attached.
type Counts struct {
	Drops   uint64 // packets refused: table_full, alloc_failed, insert_failed
	Evicted uint64 // its entries evicted by early_drop or the gc
	// GCEvicted is the part of Evicted by the gc worker, which the kernel's
	// early_drop counter leaves out (namespace totals only: rows say 0).
	GCEvicted uint64
	Inserts   uint64 // entries it got confirmed
	Deletes   uint64 // its entries removed otherwise
}

var (
	ixTableFull    = event.ReasonTableFull.KernelType()
	ixAllocFailed  = event.ReasonAllocFailed.KernelType()
	ixInsertFailed = event.ReasonInsertFailed.KernelType()
	ixEarlyDrop    = event.ReasonEarlyDrop.KernelType()
	ixGCEvict      = event.ReasonGCEvict.KernelType()
	ixInsert       = event.ReasonInsert.KernelType()
	ixDelete       = event.ReasonDelete.KernelType()
)

func countsOfTotals(t map[event.Reason]uint64) Counts {
	return Counts{
		Drops:     t[event.ReasonTableFull] + t[event.ReasonAllocFailed] + t[event.ReasonInsertFailed],
		Evicted:   t[event.ReasonEarlyDrop] + t[event.ReasonGCEvict],
		GCEvicted: t[event.ReasonGCEvict],
		Inserts:   t[event.ReasonInsert],
		Deletes:   t[event.ReasonDelete],
	}
}

// EarlyDrops are the evictions the kernel counts as early_drop.
func (c Counts) EarlyDrops() uint64 { return c.Evicted - c.GCEvicted }

// each combines c and o column by column.
func (c Counts) each(o Counts, f func(x, y uint64) uint64) Counts {
	return Counts{f(c.Drops, o.Drops), f(c.Evicted, o.Evicted), f(c.GCEvicted, o.GCEvicted), f(c.Inserts, o.Inserts), f(c.Deletes, o.Deletes)}
}

func (c Counts) sub(o Counts) Counts {
	return c.each(o, func(x, y uint64) uint64 { return x - y })
}

// atLeastZero is c - o, column by column, never below zero: the kernel's
// totals and its per-source map are read a moment apart.
func (c Counts) atLeastZero(o Counts) Counts {
	return c.each(o, func(x, y uint64) uint64 { return x - min(x, y) })
}

// since is what a source counted since prev. A source pushed out of the
// kernel's LRU map and back starts again from zero: a count below the
// previous one is all new.
func (c Counts) since(prev Counts) Counts {
	return c.each(prev, func(now, before uint64) uint64 {
		if now < before {
			return now
		}
		return now - before
	})
}

func (c Counts) add(o Counts) Counts {
	return c.each(o, func(x, y uint64) uint64 { return x + y })
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
	// Err bounds what the source did before the history gave it a row (see
	// topk.Row.Err): 0 means its counts are exact since start.
	Err uint64
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
	// SampleShift is the kernel's admission of new sources into its map:
	// 1 in 2^SampleShift (0: every source, exact; see probe.Sampler).
	SampleShift uint32
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

// Kernel is what a snapshot reads from the probes (a session.Session).
type Kernel interface {
	// Sources visits every source the kernel's bounded map holds now.
	Sources(fn func(*Source) error) error
	// Totals are every event counted, by reason: exact, whatever the bound.
	Totals() (map[event.Reason]uint64, error)
	// NamespaceTotals are the same per network namespace.
	NamespaceTotals() (map[uint32]map[event.Reason]uint64, error)
}

// Aggregator keeps what each source did across snapshots. The kernel's map
// only holds the sources active lately: under a spoofed flood it pushes a
// heavy source out seconds after its last packet. So every read's
// difference is fed to a bounded heavy-hitter tracker (topk, Space-Saving),
// and the rows are ranked from that history, not from the map alone: a
// source that was refused 600 times and went quiet still outranks a
// million spoofed sources refused once each (the bound is in doc.go of
// topk: a source with more than total/HistoryCapacity events keeps its row).
type Aggregator struct {
	opts      Options
	hist      *topk.Tracker
	read      map[Key]lastRead // the map's counters at the last read
	gen       uint32
	held      map[Key]int64 // seeded from the table at start
	seeded    int64         // entries held at start, in all
	prevTotal Counts
	prevNs    map[uint32]Counts
	last      time.Time
	evicted   bool
}

// HistoryCapacity is how many sources the history follows one by one
// (topk.DefaultCapacity, 2.5 MB): any source with more than 1/10,000 of all
// events counted keeps its row.
const HistoryCapacity = topk.DefaultCapacity

// lastRead is one kernel map entry as last read, and in which read.
type lastRead struct {
	events [len(probe.SourceTotals{}.Events)]uint64
	gen    uint32
}

// New starts an aggregator; start is when the probes were attached.
func New(opts Options, g topk.Grouping, start time.Time) (*Aggregator, error) {
	hist, err := topk.NewTracker(HistoryCapacity, g)
	if err != nil {
		return nil, err
	}
	// Sized for the kernel map once: a map grown by doubling under a flood
	// leaves its old tables to the collector, at the peak of the attack.
	read := make(map[Key]lastRead, max(opts.Capacity, 0))
	return &Aggregator{opts: opts, hist: hist, read: read, held: map[Key]int64{},
		prevNs: map[uint32]Counts{}, last: start}, nil
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

// Snapshot reads the kernel's per-source map into the history, then builds
// the view: rows ranked from the history, the header from the kernel's
// per-namespace totals, and "other" as the kernel's totals less the rows.
// The totals are read after the map, so that they are never behind it.
func (a *Aggregator) Snapshot(now time.Time, k Kernel, tables map[uint32]Namespace) (Snapshot, error) {
	snap := Snapshot{Time: now, Interval: now.Sub(a.last), Capacity: a.opts.Capacity}
	a.last = now
	if err := a.readSources(k, &snap); err != nil {
		return snap, err
	}
	perNs, err := k.NamespaceTotals()
	if err != nil {
		return snap, err
	}
	total, err := a.totals(k, perNs)
	if err != nil {
		return snap, err
	}
	nsIndex := a.namespaces(tables, perNs)
	best, shown, hidden, historyBounded := a.rank()
	snap.Bounded = a.evicted || historyBounded || (snap.Capacity > 0 && snap.Tracked >= snap.Capacity)
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
	// Other: everything the kernel counted (in the namespaces shown) that no
	// shown row holds.
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

// rank offers every source of the history, and every source seeded as
// holding entries that has had no event since, to the shortlist of rows
// shown. shown sums every row offered, hidden those the list left out.
func (a *Aggregator) rank() (best shortlist, shown, hidden Row, bounded bool) {
	best = shortlist{limit: a.opts.Limit, by: a.opts.Sort}
	offer := func(r Row) {
		shown.add(&r)
		if out, pushed := best.offer(r); pushed {
			hidden.add(&out)
		}
	}
	hs := a.hist.Snapshot()
	inHistory := make(map[Key]bool, len(hs.Rows))
	for i := range hs.Rows {
		r := rowOf(&hs.Rows[i])
		r.Held = a.heldNow(r.Key, r.Total)
		inHistory[r.Key] = true
		offer(r)
	}
	for key, n := range a.held {
		if !inHistory[key] && a.shows(key.Netns) {
			offer(Row{Key: key, Held: n})
		}
	}
	return best, shown, hidden, hs.Bounded()
}

// readSources feeds what each source in the kernel's map did since the
// last read to the history.
func (a *Aggregator) readSources(k Kernel, snap *Snapshot) error {
	a.gen++
	err := k.Sources(func(st *Source) error {
		key := Key{Netns: st.Netns, Prefix: st.Prefix}
		snap.Tracked++
		if !a.shows(key.Netns) {
			return nil
		}
		prev, seen := a.read[key]
		a.read[key] = lastRead{events: st.Events, gen: a.gen}
		if seen && prev.gen != a.gen-1 {
			prev = lastRead{} // gone from the map for a read, and back: all new
		}
		if c, ok := sinceRead(st, &prev); ok {
			a.hist.AddCounts(key, c, st.LastDropReason, st.LastDrop)
		}
		return nil
	})
	if err != nil {
		return err
	}
	// A source read before but not now was pushed out of the LRU map.
	for key, r := range a.read {
		if r.gen != a.gen {
			delete(a.read, key)
			a.evicted = true
		}
	}
	return nil
}

// sinceRead is what a source did since its last read, in the history's
// columns. A count below the last read's was pushed out of the kernel's
// map and admitted again in between: all of it is new.
func sinceRead(st *Source, prev *lastRead) (topk.Counts, bool) {
	var d [len(probe.SourceTotals{}.Events)]uint64
	var any bool
	for t, now := range st.Events {
		d[t] = now - prev.events[t]
		if now < prev.events[t] {
			d[t] = now
		}
		any = any || d[t] != 0
	}
	c := topk.Counts{
		TableFull:       d[ixTableFull],
		AllocFailed:     d[ixAllocFailed],
		InsertFailed:    d[ixInsertFailed],
		EarlyDropVictim: d[ixEarlyDrop] + d[ixGCEvict],
		Inserts:         d[ixInsert],
		Deletes:         d[ixDelete],
	}
	c.Held = int64(c.Inserts) - int64(c.EarlyDropVictim) - int64(c.Deletes)
	return c, any
}

// rowOf turns a history row into a view row.
func rowOf(h *topk.Row) Row {
	counts := func(c *topk.Counts) Counts {
		return Counts{Drops: c.Drops(), Evicted: c.EarlyDropVictim, Inserts: c.Inserts, Deletes: c.Deletes}
	}
	return Row{Key: Key(h.Key), Total: counts(&h.Counts), Rate: counts(&h.Interval), LastReason: h.Last, LastDrop: h.LastDrop, Err: h.Err}
}

// shows says whether the view includes netns.
func (a *Aggregator) shows(netns uint32) bool {
	return len(a.opts.Netns) == 0 || a.opts.Netns[netns]
}

// totals is what the kernel counted in the namespaces shown: the global
// totals, exact, or the sum of the selected namespaces'.
func (a *Aggregator) totals(k Kernel, perNs map[uint32]map[event.Reason]uint64) (Counts, error) {
	if len(a.opts.Netns) == 0 {
		byReason, err := k.Totals()
		if err != nil {
			return Counts{}, err
		}
		return countsOfTotals(byReason), nil
	}
	var c Counts
	for netns, byReason := range perNs {
		if a.shows(netns) {
			c = c.add(countsOfTotals(byReason))
		}
	}
	return c, nil
}

// namespaces builds the header: every namespace the table reader found
// and every one the kernel counted events in (filtered), with the kernel's
// own totals for the namespace, so that drops and drops/s are the
// namespace's, whatever the per-source map could hold.
func (a *Aggregator) namespaces(tables map[uint32]Namespace, perNs map[uint32]map[event.Reason]uint64) map[uint32]*Namespace {
	idx := map[uint32]*Namespace{}
	for id, t := range tables {
		if a.shows(id) {
			ns := Namespace{Netns: id, Entries: t.Entries, Max: t.Max}
			idx[id] = &ns
		}
	}
	for id, byReason := range perNs {
		if !a.shows(id) {
			continue
		}
		ns, ok := idx[id]
		if !ok {
			ns = &Namespace{Netns: id, Entries: -1}
			idx[id] = ns
		}
		ns.Total = countsOfTotals(byReason)
		ns.Rate = ns.Total.since(a.prevNs[id])
		a.prevNs[id] = ns.Total
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

// compareRows orders rows by the chosen column: the total since start
// first, then the interval's rate, then netns and prefix so the order is
// stable between refreshes. Totals first, unlike top(1)'s CPU column: in an
// attack the real offenders pause and come back, and a source refused 600
// times a minute ago must outrank thousands of spoofed sources refused
// once this second.
func compareRows(a, b Row, by SortBy) int {
	var c int
	switch by {
	case SortInserts:
		c = cmp.Or(cmp.Compare(b.Total.Inserts, a.Total.Inserts), cmp.Compare(b.Rate.Inserts, a.Rate.Inserts))
	case SortHeld:
		c = cmp.Or(cmp.Compare(b.Held, a.Held), cmp.Compare(b.Rate.Inserts, a.Rate.Inserts))
	default:
		c = cmp.Or(cmp.Compare(b.Total.Drops, a.Total.Drops), cmp.Compare(b.Rate.Drops, a.Rate.Drops))
	}
	if c != 0 {
		return c
	}
	return cmp.Or(cmp.Compare(a.Netns, b.Netns), a.Prefix.Addr().Compare(b.Prefix.Addr()))
}
