package top

import (
	"fmt"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
)

// HistoryCapacity is how many sources the history follows one by one
// unless told otherwise: 3.1 MB (MemoryBound), and more rows than any
// operator reads, so the bound only bites under a flood. Any source with
// more than 1/10,000 of all events counted keeps its row.
const HistoryCapacity = 10000

// MaxHistoryCapacity keeps row numbers within an int32 and the index's hash
// within 32 bits; at about 300 bytes a row it is 5 GB, far past any use.
const MaxHistoryCapacity = 1 << 24

// History counts what each source did across reads of the kernel's
// per-source map, in bounded memory: it follows at most its capacity of
// sources, the most active ones, and adds everything else to an "other" row
// (Space-Saving, see doc.go). It is not safe for concurrent use.
type History struct {
	grouping Grouping
	capacity int
	rows     []tracked // never longer than capacity, and never moved
	heap     []int32   // row numbers, a min-heap on weight: the next to go first
	index    index
	// other and totals are not rows of the heap: other holds what no row
	// does, totals everything, so rows + other = totals in every column.
	other, totals tally
	evictions     uint64
	since         time.Time // the previous Read
	// gone are rows Forget took from the keys of namespaces that died,
	// for the next keys to take; floor is the most a key without a row
	// can have done unseen: the weight of the heaviest row displaced.
	gone  []int32
	floor uint64
}

// tracked is one key with a row. weight and err are Space-Saving's counter
// and error: weight is an upper bound of the key's activity since the
// history started, weight-err a lower bound.
type tracked struct {
	key Key
	tally
	weight, err uint64
	pos         int32 // in heap
	forgotten   bool  // its key's namespace died: the row waits for another key
}

// NewHistory returns a history following at most capacity sources, grouped
// by g. All its memory is allocated here (see MemoryBound).
func NewHistory(capacity int, g Grouping) (*History, error) {
	if capacity < 1 || capacity > MaxHistoryCapacity {
		return nil, fmt.Errorf("max sources %d out of range (1 to %d)", capacity, MaxHistoryCapacity)
	}
	if err := g.Validate(); err != nil {
		return nil, err
	}
	return &History{
		grouping: g,
		capacity: capacity,
		rows:     make([]tracked, 0, capacity),
		heap:     make([]int32, 0, capacity),
		gone:     make([]int32, 0, capacity),
		index:    newIndex(capacity),
		since:    time.Now(),
	}, nil
}

// AddCounts counts what k did over a stretch of time, as read from a
// counter kept elsewhere (the kernel's per-source map, through
// event.Deltas): c's refusals and inserts weigh as that many events, and
// c.Held is the net change of its entries. last and at are its latest
// drop, if any. A stretch with no refusal or insert does not give k a row:
// its deletes and evictions go to "other" (losing an entry is not activity
// of the key's).
func (t *History) AddCounts(k Key, c Counts, last event.Reason, at time.Time) {
	var tl *tally
	if w := c.activity(); w > 0 {
		tl = t.active(k, w)
	} else {
		tl = t.holder(k)
	}
	held := c.Held
	c.Held = 0
	tl.now.add(c)
	t.totals.now.add(c)
	if held >= 0 {
		tl.now.Held += held
	} else {
		t.release(tl, -held)
	}
	t.totals.now.Held += held
	if last != "" {
		tl.noteDrop(last, at)
		t.totals.noteDrop(last, at)
	}
}

// AddHeld counts n entries (n < 0: removes them) that k holds in the table
// without an insert or delete event: the table's entries at start, from a
// dump. Entries held are as heavy as inserts (each was one), so a large
// holder seen in the dump takes a row from a small one under the same
// bound as events; the small one's counts go to "other".
func (t *History) AddHeld(k Key, n int64) {
	switch {
	case n > 0:
		t.active(k, uint64(n)).now.Held += n
	case n < 0:
		t.release(t.holder(k), -n)
	}
	t.totals.now.Held += n
}

// release takes n entries held away from c. A row never goes below zero:
// an entry it did not count as held (inserted before the key last got its
// row, its count moved to "other" since) is taken from "other", where it
// was counted.
func (t *History) release(c *tally, n int64) {
	if c != &t.other {
		own := min(n, max(c.now.Held, 0))
		c.now.Held -= own
		n -= own
	}
	t.other.now.Held -= n
}

// holder returns the tally that answers for k's entries: its row, or
// "other" when k has none.
func (t *History) holder(k Key) *tally {
	if !k.Valid() {
		return &t.other
	}
	if i, ok := t.index.find(k, t.rows); ok {
		return &t.rows[i].tally
	}
	return &t.other
}

// active weighs w units of activity for k and returns its tally, giving k
// a row if it has none: a free one while there are, else the row of the
// least active key, whose counts go to "other" (Space-Saving).
func (t *History) active(k Key, w uint64) *tally {
	if !k.Valid() {
		return &t.other
	}
	if i, ok := t.index.find(k, t.rows); ok {
		t.rows[i].weight += w
		t.sink(int(t.rows[i].pos))
		return &t.rows[i].tally
	}
	if len(t.rows) < t.capacity {
		return &t.rows[t.track(k, w)].tally
	}
	if len(t.gone) > 0 {
		return &t.rows[t.reuse(k, w)].tally
	}
	return &t.rows[t.displace(k, w)].tally
}

// reuse gives k a row Forget freed. k may have been active unseen, as much
// as any key without a row: it inherits that bound as its error.
func (t *History) reuse(k Key, w uint64) int32 {
	i := t.gone[len(t.gone)-1]
	t.gone = t.gone[:len(t.gone)-1]
	r := &t.rows[i]
	*r = tracked{key: k, weight: t.floor + w, err: t.floor, pos: r.pos}
	t.index.insert(k, i)
	t.rise(int(r.pos))
	return i
}

// Forget takes away the rows of the keys match says, and what they counted
// from the totals: their namespace died, and neither its sources nor its
// counts should outlive it. The rows go to the next new keys.
func (t *History) Forget(match func(Key) bool) {
	for i := range t.rows {
		r := &t.rows[i]
		if r.forgotten || !match(r.key) {
			continue
		}
		t.totals.now = t.totals.now.minus(r.now)
		t.totals.atRead = t.totals.atRead.minus(r.atRead)
		t.index.remove(r.key, t.rows)
		r.forgotten, r.tally = true, tally{}
		// The heaviest weight there is: the row sinks under every live one
		// and is never the least active key displace takes.
		r.weight = ^uint64(0)
		t.sink(int(r.pos))
		t.gone = append(t.gone, int32(i))
	}
}

// track gives k a free row.
func (t *History) track(k Key, w uint64) int32 {
	i := int32(len(t.rows))
	t.rows = append(t.rows, tracked{key: k, weight: w, pos: int32(len(t.heap))})
	t.heap = append(t.heap, i)
	t.index.insert(k, i)
	t.rise(len(t.heap) - 1)
	return i
}

// displace gives k the row of the least active key. k inherits that key's
// weight as its error: k may have been that active before, unseen, but no
// more (every key without a row weighs at most the minimum).
func (t *History) displace(k Key, w uint64) int32 {
	i := t.heap[0]
	r := &t.rows[i]
	t.index.remove(r.key, t.rows)
	t.other.absorb(&r.tally)
	t.evictions++
	floor := r.weight
	t.floor = max(t.floor, floor)
	*r = tracked{key: k, weight: floor + w, err: floor, pos: 0}
	t.index.insert(k, i)
	t.sink(0)
	return i
}

// lighter orders the heap.
func (t *History) lighter(a, b int) bool {
	return t.rows[t.heap[a]].weight < t.rows[t.heap[b]].weight
}

func (t *History) swap(a, b int) {
	t.heap[a], t.heap[b] = t.heap[b], t.heap[a]
	t.rows[t.heap[a]].pos = int32(a)
	t.rows[t.heap[b]].pos = int32(b)
}

// sink restores the heap after the weight at p grew.
func (t *History) sink(p int) {
	for {
		c := 2*p + 1
		if c >= len(t.heap) {
			return
		}
		if c+1 < len(t.heap) && t.lighter(c+1, c) {
			c++
		}
		if !t.lighter(c, p) {
			return
		}
		t.swap(p, c)
		p = c
	}
}

// rise places a new entry at p.
func (t *History) rise(p int) {
	for p > 0 {
		parent := (p - 1) / 2
		if !t.lighter(p, parent) {
			return
		}
		t.swap(p, parent)
		p = parent
	}
}

// tally is one row's counts, now and at the previous reading, so that a
// reading can give rates without keeping a second table.
type tally struct {
	now, atRead Counts
	last        event.Reason
	lastDrop    time.Time
}

// noteDrop remembers the latest drop or eviction, for the "last" column.
func (t *tally) noteDrop(r event.Reason, at time.Time) {
	if at.Before(t.lastDrop) {
		return // an earlier CPU's event read late; keep the latest
	}
	t.last, t.lastDrop = r, at
}

// absorb adds o into t, both its counts now and at the previous reading,
// so that t's interval counts gain exactly o's interval counts.
func (t *tally) absorb(o *tally) {
	t.now.add(o.now)
	t.atRead.add(o.atRead)
	if o.last != "" {
		t.noteDrop(o.last, o.lastDrop)
	}
}

func (t *tally) row() Row {
	return Row{Total: t.now, Rate: t.now.minus(t.atRead), LastReason: t.last, LastDrop: t.lastDrop}
}

// Tally is the history at one moment: every row, and the figures that make
// their totals add up.
type Tally struct {
	Rows []Row // every row, in no particular order
	// Other is everything counted for no row: sources that lost their row
	// to busier ones, events without a flow. Rows + Other = Totals, exactly,
	// in every column and in every interval.
	Other  Row
	Totals Row
	// Tracked is how many sources have a row now; Capacity the most that
	// can. Evictions counts rows given to another source: above zero the
	// bound is in effect, and rows' counts may be bounded rather than exact.
	Tracked, Capacity int
	Evictions         uint64
	// Interval is the time since the previous reading (or the history's
	// start), over which each row's Rate counts were made.
	Interval time.Duration
}

// Bounded reports whether the bound is in effect: some source lost its row.
func (s *Tally) Bounded() bool { return s.Evictions > 0 }

// Read returns every row (Rate: since the previous Read; Err: see doc.go)
// and starts a new interval. It allocates only the rows it returns.
func (t *History) Read() Tally {
	rows := make([]Row, 0, len(t.rows)-len(t.gone))
	s := t.ReadEach(func(r Row) { rows = append(rows, r) })
	s.Rows = rows
	return s
}

// ReadEach is Read with each row handed to fn rather than returned in
// Rows, which it leaves nil: a ranking that keeps a few rows of its
// capacity (serve's) does not copy every row each second.
func (t *History) ReadEach(fn func(Row)) Tally {
	now := time.Now()
	s := Tally{
		Other:     t.other.row(),
		Totals:    t.totals.row(),
		Tracked:   len(t.rows) - len(t.gone),
		Capacity:  t.capacity,
		Evictions: t.evictions,
		Interval:  now.Sub(t.since),
	}
	for i := range t.rows {
		r := &t.rows[i]
		if r.forgotten {
			continue
		}
		row := r.tally.row()
		row.Key, row.Err = r.key, r.err
		fn(row)
	}
	for i := range t.rows {
		t.rows[i].atRead = t.rows[i].now
	}
	t.other.atRead, t.totals.atRead = t.other.now, t.totals.now
	t.since = now
	return s
}
