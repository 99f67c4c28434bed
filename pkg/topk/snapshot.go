package topk

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
)

// Snapshot is the tracker's view at one moment, for one refresh of the
// view: the top rows, and the figures that make their totals add up.
type Snapshot struct {
	Rows []Row // the top rows, best first
	// Other is everything counted for no row: sources that lost their row
	// to busier ones, rows not tracked for want of room, events without a
	// flow. Rows (all of them, not only those returned) + Other = Totals,
	// exactly, in every column and in every interval.
	Other  Row
	Totals Row
	// Tracked is how many sources have a row now; Capacity the most that
	// can. Evictions counts rows given to another source: above zero the
	// bound is in effect, and rows' counts may be bounded rather than exact.
	Tracked, Capacity int
	Evictions         uint64
	// Interval is the time since the previous snapshot (or the tracker's
	// start), over which each row's Interval counts were made.
	Interval time.Duration
}

// Bounded reports whether the bound is in effect: some source lost its row.
func (s *Snapshot) Bounded() bool { return s.Evictions > 0 }

// Row is one source's counts.
type Row struct {
	Key
	// Counts are the counts since the key got its row (see doc.go for
	// which are exact and which bounds).
	Counts
	// Interval are the counts since the previous snapshot (Held: the net
	// change), for rates: divide by Snapshot.Interval.
	Interval Counts
	Last     event.Reason // the latest drop or eviction; "" if none
	LastDrop time.Time
	// Err bounds what the key did before it got its row: Inserts, TableFull,
	// AllocFailed and InsertFailed are each at most Err under the truth.
	// Zero means the key has been tracked since its first event: exact.
	Err uint64
	// Share is Held over the namespace's table entries (SetTableCount);
	// 0 when that is unknown.
	Share float64
}

// SortKey says what ranks the rows.
type SortKey int

// Sort keys. Drops and inserts rank by the interval's count (what happens
// now, as top does), then by the total; held ranks by entries held, then by
// the interval's inserts.
const (
	SortDrops SortKey = iota
	SortInserts
	SortHeld
)

var sortKeyNames = [...]string{SortDrops: "drops", SortInserts: "inserts", SortHeld: "held"}

func (s SortKey) String() string {
	if s >= 0 && int(s) < len(sortKeyNames) {
		return sortKeyNames[s]
	}
	return fmt.Sprintf("SortKey(%d)", int(s))
}

// ParseSortKey reads --sort.
func ParseSortKey(s string) (SortKey, error) {
	name := strings.ToLower(strings.TrimSpace(s))
	for k, n := range sortKeyNames {
		if n == name {
			return SortKey(k), nil
		}
	}
	return 0, fmt.Errorf("unknown sort key %q (valid: %s)", s, strings.Join(sortKeyNames[:], ", "))
}

// Snapshot returns the limit top rows by sortBy (all rows if limit <= 0)
// and starts a new interval. It allocates only the rows it returns; its
// time is O(tracked × log limit).
func (t *Tracker) Snapshot(sortBy SortKey, limit int) Snapshot {
	now := time.Now()
	s := Snapshot{
		Other:     t.other.export(),
		Totals:    t.totals.export(),
		Tracked:   len(t.rows),
		Capacity:  t.capacity,
		Evictions: t.evictions,
		Interval:  now.Sub(t.since),
	}
	top := t.top(sortBy, limit)
	s.Rows = make([]Row, len(top))
	for j, i := range top {
		s.Rows[j] = t.export(&t.rows[i])
	}
	t.startInterval(now)
	return s
}

func (t *Tracker) export(r *row) Row {
	out := r.tally.export()
	out.Key, out.Err = r.key, r.err
	if n := t.tables[r.key.Netns]; n > 0 {
		out.Share = float64(max(r.now.Held, 0)) / float64(n)
	}
	return out
}

// startInterval makes every count so far the base of the next interval.
func (t *Tracker) startInterval(now time.Time) {
	for i := range t.rows {
		t.rows[i].atSnapshot = t.rows[i].now
	}
	t.other.atSnapshot = t.other.now
	t.totals.atSnapshot = t.totals.now
	t.since = now
}

// top returns the row numbers of the limit best rows, best first. It keeps
// the best so far in a heap with the worst of them on top, so each row
// costs one comparison unless it displaces that worst.
func (t *Tracker) top(by SortKey, limit int) []int32 {
	if limit <= 0 || limit > len(t.rows) {
		limit = len(t.rows)
	}
	if cap(t.selected) < limit {
		t.selected = make([]int32, 0, limit) // exactly: MemoryBound counts on it
	}
	sel := t.selected[:0]
	worse := func(a, b int32) bool { return t.compare(by, a, b) > 0 }
	for i := range int32(len(t.rows)) {
		switch {
		case len(sel) < limit:
			sel = append(sel, i)
			riseWorst(sel, len(sel)-1, worse)
		case worse(sel[0], i):
			sel[0] = i
			sinkWorst(sel, 0, worse)
		}
	}
	slices.SortFunc(sel, func(a, b int32) int { return t.compare(by, a, b) })
	t.selected = sel
	return sel
}

// compare orders rows best first; equal ranks fall back to the key, so
// the order is stable from one refresh to the next.
func (t *Tracker) compare(by SortKey, a, b int32) int {
	ra, rb := &t.rows[a], &t.rows[b]
	a1, a2 := ra.rank(by)
	b1, b2 := rb.rank(by)
	switch {
	case a1 != b1:
		return cmp.Compare(b1, a1)
	case a2 != b2:
		return cmp.Compare(b2, a2)
	case ra.key.Netns != rb.key.Netns:
		return cmp.Compare(ra.key.Netns, rb.key.Netns)
	}
	return comparePrefixes(ra.key.Prefix, rb.key.Prefix)
}

// comparePrefixes orders by address, then length (Prefix.Compare is Go
// 1.26, newer than go.mod allows).
func comparePrefixes(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}

// rank gives what the row is sorted on, first and second.
func (r *row) rank(by SortKey) (uint64, uint64) {
	interval := r.now.minus(r.atSnapshot)
	switch by {
	case SortInserts:
		return interval.Inserts, r.now.Inserts
	case SortHeld:
		return uint64(max(r.now.Held, 0)), interval.Inserts
	}
	return interval.Drops(), r.now.Drops()
}

// riseWorst and sinkWorst keep the worst of sel at sel[0].
func riseWorst(sel []int32, p int, worse func(a, b int32) bool) {
	for p > 0 {
		parent := (p - 1) / 2
		if !worse(sel[p], sel[parent]) {
			return
		}
		sel[p], sel[parent] = sel[parent], sel[p]
		p = parent
	}
}

func sinkWorst(sel []int32, p int, worse func(a, b int32) bool) {
	for {
		c := 2*p + 1
		if c >= len(sel) {
			return
		}
		if c+1 < len(sel) && worse(sel[c+1], sel[c]) {
			c++
		}
		if !worse(sel[c], sel[p]) {
			return
		}
		sel[p], sel[c] = sel[c], sel[p]
		p = c
	}
}
