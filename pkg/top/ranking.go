package top

import (
	"cmp"
	"slices"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
)

// Row is one source's line of the view; the History's rows have the same
// shape (Share is the view's alone).
type Row struct {
	Key
	Total Counts // since start; Total.Held: the entries it holds now
	Rate  Counts // in the last interval
	// Share is Total.Held / the namespace's entries, 0..1.
	Share      float64
	LastReason event.Reason // the latest drop or eviction; "" if none
	LastDrop   time.Time
	// Err bounds what the source did before the history gave it a row (see
	// doc.go): 0 means its counts are exact since start.
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
	Netns   event.Netns
	Entries int64  // entries now (from the table), -1 when unknown
	Max     uint32 // nf_conntrack_max
	Total   Counts
	Rate    Counts
	// listed says that conntrack is in use there (table.NamespaceStats's
	// InUse): the tables know every namespace that lives, to tell the dead,
	// but give a line only to those.
	listed bool
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
	Backend    string // the probes' (or "replay", or the recording's)
	Sort       SortBy // how Rows are ranked
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

// ParseSortBy reads a column name as an operator types it.
func ParseSortBy(s string) (SortBy, bool) {
	switch by := SortBy(s); by {
	case SortDrops, SortInserts, SortHeld:
		return by, true
	}
	return "", false
}

// Options shape the view.
type Options struct {
	Sort  SortBy
	Limit int // rows shown
	// PerNetns, when set, also keeps at most that many rows a namespace:
	// serve exports its top sources a namespace, and a limit of rows for
	// all would leave out a small namespace's.
	PerNetns int
	Netns    map[uint32]bool // only these namespaces, by inode number (empty: all)
	// Capacity is how many sources the kernel's map holds (--max-sources).
	Capacity int
	Grouping Grouping
	// Interval is how often the view refreshes; Once stops after one.
	Interval time.Duration
	Once     bool
}

// DefaultOptions are top-sources' defaults, which `status --watch` shows
// too.
func DefaultOptions() Options {
	return Options{Sort: SortDrops, Limit: 20, Capacity: 65536, Grouping: DefaultGrouping, Interval: time.Second}
}

// Kernel is what a snapshot reads: a live session (session.Session), or a
// recording read back (Recording).
type Kernel interface {
	// Sources visits every source the kernel's bounded map holds now.
	Sources(fn func(*event.SourceCounts) error) error
	// NamespaceCounts are every event counted per network namespace:
	// exact, whatever the per-source bound.
	NamespaceCounts() (map[event.Netns]event.NamespaceCounts, error)
}

// IdleDropper is a Kernel whose map sources that counted nothing since the
// previous read can be removed from (session.Session): they are in the
// history already, and a flood's spoofed sources would otherwise fill the
// map, and the ranking's copy of it, for good.
type IdleDropper interface {
	// DropSources removes keys and calls last with the counts of each
	// one it removed, as it removed it, where the kernel can say.
	DropSources(keys []event.SourceKey, last func(*event.SourceCounts)) error
}

// idleReads is how many reads in a row must find a source with nothing new
// before it is removed from the kernel's map: the four reads the map's
// Sampler keeps a source for (probe.Sampler). One was not enough on a
// loaded machine (a 5.10 guest beside another): a flood's sender can be
// descheduled for a whole interval, and reads come back to back when one
// is late (time.Ticker). A source removed as it comes back is a new source
// to the kernel, which takes it in only while the map has room; and on
// kernels that cannot return what they delete, what lands between the read
// and the removal is lost to it (probe.DropSources).
const idleReads = 4

// Ranking keeps what each source did across snapshots. The kernel's map
// only holds the sources active lately: under a spoofed flood it pushes a
// heavy source out seconds after its last packet. So every read's
// difference is fed to a bounded History (Space-Saving), and the rows are
// ranked from that history, not from the map alone: a source that was
// refused 600 times and went quiet still outranks a million spoofed sources
// refused once each (doc.go: a source with more than total/HistoryCapacity
// events keeps its row).
type Ranking struct {
	opts   Options
	hist   *History
	deltas *event.Deltas[Key]
	idle   []event.SourceKey // read and idle since the previous read
	held   map[Key]int64     // seeded from the table at start
	// heldFromDumps: held is re-seeded from a dump at refreshes, not kept
	// by insert and delete events (Tables.redump).
	heldFromDumps bool
	seeded        map[event.Netns]int64 // entries held at start, per namespace
	prevTotal     event.Counts
	prevNs        map[event.Netns]event.Counts
	last          time.Time
	evicted       bool // a source was pushed out of the kernel's map
	// missing counts the reads a namespace counted in the kernel was not
	// among the tables; dead are the namespaces found dead since the kernel
	// side was last told (takeDead); firstSeen is the read in which each
	// namespace was first counted.
	missing   map[event.Netns]int
	dead      []event.Netns
	firstSeen map[event.Netns]uint64
	reads     uint64
	// gone are the identities forgotten lately, oldest first: one counted
	// again (a late record, a kernel side that failed to forget) is told
	// again, never taken for the living namespace of its inode.
	gone     map[event.Netns]bool
	goneList []event.Netns
}

// goneMemory bounds the identities a Ranking remembers as dead, as the
// kernel side's dead_netns map bounds its own.
const goneMemory = 1024

// NewRanking starts a ranking; start is when the probes were attached.
func NewRanking(opts Options, start time.Time) (*Ranking, error) {
	hist, err := NewHistory(HistoryCapacity, opts.Grouping)
	if err != nil {
		return nil, err
	}
	return &Ranking{opts: opts, hist: hist, deltas: event.NewDeltas[Key](0), held: map[Key]int64{},
		seeded: map[event.Netns]int64{}, prevNs: map[event.Netns]event.Counts{}, missing: map[event.Netns]int{},
		firstSeen: map[event.Netns]uint64{}, gone: map[event.Netns]bool{}, last: start}, nil
}

// resetHeld forgets the seeded entries, before seeding anew from a fresh
// dump (Tables, for a backend that sees no inserts or deletes).
func (a *Ranking) resetHeld() {
	clear(a.held)
	clear(a.seeded)
}

// seed records the entries a source held when cttrace attached.
func (a *Ranking) seed(k Key, entries int64) {
	a.held[k] += entries
}

// Snapshot reads the kernel's per-source map into the history, then builds
// the view: rows ranked from the history, the header from the kernel's
// per-namespace totals, and "other" as the kernel's totals less the rows.
// The totals are read after the map, so that they are never behind it.
func (a *Ranking) Snapshot(now time.Time, k Kernel, tables map[uint32]Namespace) (Snapshot, error) {
	snap := Snapshot{Sort: a.opts.Sort, Time: now, Interval: now.Sub(a.last), Capacity: a.opts.Capacity}
	a.last = now
	if err := a.readSources(k, &snap); err != nil {
		return snap, err
	}
	counted, err := k.NamespaceCounts()
	if err != nil {
		return snap, err
	}
	perNs := a.living(tables, counted)
	total, seeded := a.totals(perNs)
	nsIndex := a.namespaces(tables, perNs)
	rows, shown, hidden, historyBounded := a.rank()
	snap.Bounded = a.evicted || historyBounded || (snap.Capacity > 0 && snap.Tracked >= snap.Capacity)
	for _, ns := range nsIndex {
		snap.Namespaces = append(snap.Namespaces, *ns)
	}
	slices.SortFunc(snap.Namespaces, func(x, y Namespace) int { return cmp.Compare(x.Netns.Inode, y.Netns.Inode) })
	snap.Rows = rows
	for i := range snap.Rows {
		if ns := nsIndex[snap.Rows[i].Netns.Inode]; ns != nil && ns.Entries > 0 {
			snap.Rows[i].Share = float64(snap.Rows[i].Total.Held) / float64(ns.Entries)
		}
	}
	// Other: everything the kernel counted (in the namespaces shown) that no
	// shown row holds.
	inRows := shown.Total.minus(hidden.Total)
	rate := total.Since(a.prevTotal)
	snap.Other = Row{Total: Counts{Events: total.Minus(inRows.Events)},
		Rate: Counts{Events: rate.Minus(shown.Rate.minus(hidden.Rate).Events)}}
	// Held reconciles like the counts: what the table held at start plus
	// what came minus what went, less what the shown rows hold.
	snap.Other.Total.Held = seeded + a.heldChange(total) - inRows.Held
	a.prevTotal = total
	return snap, nil
}

// rank offers every source of the history, and every source seeded as
// holding entries that has had no event since, to the shortlist of rows
// shown. shown sums every row offered, hidden those the list left out.
func (a *Ranking) rank() (rows []Row, shown, hidden Row, bounded bool) {
	best := shortlist{limit: a.opts.Limit, by: a.opts.Sort}
	perNetns := map[event.Netns]*shortlist{}
	list := func(ns event.Netns) *shortlist {
		if a.opts.PerNetns <= 0 {
			return &best
		}
		l := perNetns[ns]
		if l == nil {
			l = &shortlist{limit: a.opts.PerNetns, by: a.opts.Sort}
			perNetns[ns] = l
		}
		return l
	}
	offer := func(r Row) {
		shown.add(&r)
		if out, pushed := list(r.Netns).offer(r); pushed {
			hidden.add(&out)
		}
	}
	inHistory := make(map[Key]bool, len(a.held))
	hs := a.hist.ReadEach(func(r Row) {
		r.Total.Held = a.heldNow(r.Key, r.Total)
		if _, ok := a.held[r.Key]; ok {
			inHistory[r.Key] = true
		}
		offer(r)
	})
	for key, n := range a.held {
		if !inHistory[key] && a.shows(key.Netns.Inode) {
			offer(Row{Key: key, Total: Counts{Held: n}})
		}
	}
	// Each namespace's best, then the limit of rows for all.
	for _, l := range perNetns {
		for _, r := range l.rows {
			if out, pushed := best.offer(r); pushed {
				hidden.add(&out)
			}
		}
	}
	return best.rows, shown, hidden, hs.Bounded()
}

// readSources feeds what each source in the kernel's map did since the
// last read to the history.
func (a *Ranking) readSources(k Kernel, snap *Snapshot) error {
	a.deltas.Begin()
	err := k.Sources(func(st *event.SourceCounts) error {
		key := Key{Netns: st.Netns, Prefix: st.Prefix}
		snap.Tracked++
		if !a.shows(key.Netns.Inode) || a.gone[key.Netns] {
			return nil
		}
		if d := a.deltas.Since(key, st.Events); !d.IsZero() {
			a.addSince(key, d, st)
		} else if a.deltas.Quiet(key) >= idleReads {
			a.idle = append(a.idle, event.SourceKey{Netns: key.Netns, Prefix: key.Prefix})
		}
		return nil
	})
	if err != nil {
		return err
	}
	// A source read before but not now was pushed out of the LRU map.
	if a.deltas.End() > 0 {
		a.evicted = true
	}
	return a.dropIdle(k)
}

// dropIdle removes the sources that counted nothing since the previous
// read from the kernel's map, where the kernel allows it.
func (a *Ranking) dropIdle(k Kernel) error {
	idle := a.idle
	a.idle = a.idle[:0]
	d, ok := k.(IdleDropper)
	if !ok || len(idle) == 0 {
		return nil
	}
	err := d.DropSources(idle, func(st *event.SourceCounts) {
		key := Key{Netns: st.Netns, Prefix: st.Prefix}
		if late := a.deltas.Removed(key, st.Events); !late.IsZero() {
			a.addSince(key, late, st)
		}
	})
	for _, key := range idle {
		a.deltas.Drop(Key{Netns: key.Netns, Prefix: key.Prefix})
	}
	return err
}

// addSince adds to the history what a source did since its previous read.
func (a *Ranking) addSince(key Key, d event.Counts, st *event.SourceCounts) {
	a.hist.AddCounts(key, Counts{Events: d, Held: a.heldChange(d)}, st.LastDropReason, st.LastDrop)
}

// shows says whether the view includes the namespace of that inode number.
func (a *Ranking) shows(inode uint32) bool {
	return len(a.opts.Netns) == 0 || a.opts.Netns[inode]
}

// totals is what the kernel counted in the living namespaces shown, and
// the entries they held when cttrace attached.
func (a *Ranking) totals(perNs map[event.Netns]event.NamespaceCounts) (event.Counts, int64) {
	var c event.Counts
	var seeded int64
	for netns, n := range perNs {
		if a.shows(netns.Inode) {
			c = c.Plus(n.Events)
			seeded += a.seeded[netns]
		}
	}
	return c, seeded
}

// namespaces builds the header: every namespace the table reader found
// and every one the kernel counted events in (filtered), with the kernel's
// own totals for the namespace, so that drops and drops/s are the
// namespace's, whatever the per-source map could hold.
func (a *Ranking) namespaces(tables map[uint32]Namespace, perNs map[event.Netns]event.NamespaceCounts) map[uint32]*Namespace {
	idx := map[uint32]*Namespace{} // living namespaces have an inode each
	for inode, t := range tables {
		if a.shows(inode) && t.listed {
			ns := Namespace{Netns: t.Netns, Entries: t.Entries, Max: t.Max}
			idx[inode] = &ns
		}
	}
	for netns, n := range perNs {
		if !a.shows(netns.Inode) || netns.ID == 0 {
			continue // no namespace: in the totals, on no line
		}
		ns, ok := idx[netns.Inode]
		if !ok {
			ns = &Namespace{Netns: netns, Entries: -1}
			if t, found := tables[netns.Inode]; found {
				ns.Entries, ns.Max = t.Entries, t.Max
			}
			idx[netns.Inode] = ns
		}
		ns.Total = Counts{Events: n.Events}
		ns.Rate = Counts{Events: n.Events.Since(a.prevNs[netns])}
		a.prevNs[netns] = n.Events
	}
	return idx
}

// living keeps, of the namespaces the kernel counted, those that live, and
// forgets the others. The kernel hands a dead namespace's inode number to
// the next one at once, and two namespaces never hold one inode at the
// same time, so:
//   - where the tables show the inode with a cookie, only that identity
//     lives;
//   - elsewhere, of the identities counted under one inode, only the
//     newest can live: the one first counted last (a namespace counts
//     nothing once dead, and the next one of its inode is made after it;
//     cookies come from per-CPU batches, so their order says nothing);
//   - an inode the tables miss twice in a row is gone (once may be a
//     process caught exiting).
//
// Without tables (a failed read, a replay) the last rule does not apply.
// The namespace with no identity, where the kernel counts events that came
// with no namespace, always lives.
func (a *Ranking) living(tables map[uint32]Namespace, counted map[event.Netns]event.NamespaceCounts) map[event.Netns]event.NamespaceCounts {
	a.reads++
	newest := map[uint32]event.Netns{}
	for netns := range counted {
		if a.gone[netns] {
			a.dead = append(a.dead, netns)
			continue
		}
		if _, ok := a.firstSeen[netns]; !ok {
			a.firstSeen[netns] = a.reads
		}
		if n, ok := newest[netns.Inode]; !ok || a.firstSeen[netns] > a.firstSeen[n] ||
			a.firstSeen[netns] == a.firstSeen[n] && netns.ID > n.ID { // first counted in one read: either
			newest[netns.Inode] = netns
		}
	}
	live := make(map[event.Netns]event.NamespaceCounts, len(counted))
	for netns, c := range counted {
		if netns.ID == 0 {
			live[netns] = c
			continue
		}
		if a.gone[netns] {
			continue
		}
		alive := netns == newest[netns.Inode]
		t, found := tables[netns.Inode]
		switch {
		case found && t.Netns.Cookie() != 0:
			alive = t.Netns.ID == netns.ID // the inode may be another namespace's now
		case found || tables == nil:
		case alive && a.missing[netns] < 1:
			a.missing[netns]++
		default:
			alive = false
		}
		if found {
			delete(a.missing, netns)
		}
		if !alive {
			a.forget(netns)
			continue
		}
		live[netns] = c
	}
	return live
}

// forget drops what the view keeps of a dead namespace: its line, its
// sources' rows and entries held, and (through takeDead) the kernel's.
func (a *Ranking) forget(netns event.Netns) {
	if a.shows(netns.Inode) {
		// The totals lose the namespace's counts: so does the previous
		// reading they are compared with, or the next interval would take
		// the drop for counters that started again.
		a.prevTotal = a.prevTotal.Minus(a.prevNs[netns])
	}
	delete(a.missing, netns)
	delete(a.firstSeen, netns)
	delete(a.prevNs, netns)
	delete(a.seeded, netns)
	for k := range a.held {
		if k.Netns.ID == netns.ID {
			delete(a.held, k)
		}
	}
	a.hist.Forget(func(k Key) bool { return k.Netns.ID == netns.ID })
	a.deltas.Forget(func(k Key) bool { return k.Netns.ID == netns.ID })
	a.dead = append(a.dead, netns)
	a.remember(netns)
}

// remember keeps netns among the dead, unless it is known by inode number
// only: that identity comes back with the next namespace of its inode.
func (a *Ranking) remember(netns event.Netns) {
	if netns.Cookie() == 0 {
		return
	}
	a.gone[netns] = true
	a.goneList = append(a.goneList, netns)
	if len(a.goneList) > goneMemory {
		delete(a.gone, a.goneList[0])
		a.goneList = slices.Delete(a.goneList, 0, 1)
	}
}

// takeDead returns the namespaces found dead since the last call.
func (a *Ranking) takeDead() []event.Netns {
	dead := a.dead
	a.dead = nil
	return dead
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
	s.Total.add(r.Total)
	s.Rate.add(r.Rate)
}

// heldNow is what source k holds: its entries at start plus what it got
// confirmed, less what it lost. Never below zero: a source pushed out of
// the kernel's map loses the inserts its later deletes balance.
func (a *Ranking) heldNow(k Key, c Counts) int64 {
	return max(0, a.held[k]+a.heldChange(c.Events))
}

// heldChange is the change in entries held that events make, where they
// make it: with held from dumps (heldFromDumps), the dump has it all.
func (a *Ranking) heldChange(e event.Counts) int64 {
	if a.heldFromDumps {
		return 0
	}
	return heldChange(e)
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
		c = cmp.Or(cmp.Compare(b.Total.Inserts(), a.Total.Inserts()), cmp.Compare(b.Rate.Inserts(), a.Rate.Inserts()))
	case SortHeld:
		c = cmp.Or(cmp.Compare(b.Total.Held, a.Total.Held), cmp.Compare(b.Rate.Inserts(), a.Rate.Inserts()))
	default:
		c = cmp.Or(cmp.Compare(b.Total.Drops(), a.Total.Drops()), cmp.Compare(b.Rate.Drops(), a.Rate.Drops()))
	}
	if c != 0 {
		return c
	}
	return cmp.Or(cmp.Compare(a.Netns.Inode, b.Netns.Inode), cmp.Compare(a.Netns.ID, b.Netns.ID), a.Prefix.Addr().Compare(b.Prefix.Addr()))
}
