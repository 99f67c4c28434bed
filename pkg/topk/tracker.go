package topk

import (
	"fmt"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
)

// DefaultCapacity is how many sources a tracker follows one by one unless
// told otherwise: 2.5 MB (MemoryBound), and more rows than any
// operator reads, so the bound only bites under a flood.
const DefaultCapacity = 10000

// MaxCapacity keeps row numbers within an int32 and the index's hash
// within 32 bits; at about 250 bytes a row it is 4 GB, far past any use.
const MaxCapacity = 1 << 24

// Tracker aggregates conntrack events per source in bounded memory: it
// follows at most its capacity of sources, the most active ones, and adds
// everything else to an "other" row (see doc.go). It is not safe for
// concurrent use; session.Run calls every handler from one goroutine.
type Tracker struct {
	grouping Grouping
	capacity int
	rows     []row   // never longer than capacity, and never moved
	heap     []int32 // row numbers, a min-heap on weight: the next to go first
	index    index
	// other and totals are not rows of the heap: other holds what no row
	// does, totals everything, so rows + other = totals in every column.
	other, totals tally
	evictions     uint64
	since         time.Time // the previous snapshot
}

// row is one tracked key. weight and err are Space-Saving's counter and
// error: weight is an upper bound of the key's activity since the tracker
// started, weight-err a lower bound.
type row struct {
	key Key
	tally
	weight, err uint64
	pos         int32 // in heap
}

// NewTracker returns a tracker following at most capacity sources, grouped
// by g. All its memory is allocated here (see MemoryBound).
func NewTracker(capacity int, g Grouping) (*Tracker, error) {
	if capacity < 1 || capacity > MaxCapacity {
		return nil, fmt.Errorf("max sources %d out of range (1 to %d)", capacity, MaxCapacity)
	}
	if err := g.Validate(); err != nil {
		return nil, err
	}
	return &Tracker{
		grouping: g,
		capacity: capacity,
		rows:     make([]row, 0, capacity),
		heap:     make([]int32, 0, capacity),
		index:    newIndex(capacity),
		since:    time.Now(),
	}, nil
}

// AddCounts counts what k did over a stretch of time, as read from a
// counter kept elsewhere (the kernel's per-source map): c's refusals and
// inserts weigh as that many events, and c.Held is the net change of its
// entries. last and at are its latest drop, if any. A stretch with no
// refusal or insert does not give k a row: its deletes and evictions go
// to "other" (losing an entry is not activity of the key's).
func (t *Tracker) AddCounts(k Key, c Counts, last event.Reason, at time.Time) {
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
func (t *Tracker) AddHeld(k Key, n int64) {
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
func (t *Tracker) release(c *tally, n int64) {
	if c != &t.other {
		own := min(n, max(c.now.Held, 0))
		c.now.Held -= own
		n -= own
	}
	t.other.now.Held -= n
}

// holder returns the tally that answers for k's entries: its row, or
// "other" when k has none.
func (t *Tracker) holder(k Key) *tally {
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
func (t *Tracker) active(k Key, w uint64) *tally {
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
	return &t.rows[t.displace(k, w)].tally
}

// track gives k a free row.
func (t *Tracker) track(k Key, w uint64) int32 {
	i := int32(len(t.rows))
	t.rows = append(t.rows, row{key: k, weight: w, pos: int32(len(t.heap))})
	t.heap = append(t.heap, i)
	t.index.insert(k, i)
	t.rise(len(t.heap) - 1)
	return i
}

// displace gives k the row of the least active key. k inherits that key's
// weight as its error: k may have been that active before, unseen, but no
// more (every key without a row weighs at most the minimum).
func (t *Tracker) displace(k Key, w uint64) int32 {
	i := t.heap[0]
	r := &t.rows[i]
	t.index.remove(r.key, t.rows)
	t.other.absorb(&r.tally)
	t.evictions++
	floor := r.weight
	*r = row{key: k, weight: floor + w, err: floor, pos: 0}
	t.index.insert(k, i)
	t.sink(0)
	return i
}

// lighter orders the heap.
func (t *Tracker) lighter(a, b int) bool {
	return t.rows[t.heap[a]].weight < t.rows[t.heap[b]].weight
}

func (t *Tracker) swap(a, b int) {
	t.heap[a], t.heap[b] = t.heap[b], t.heap[a]
	t.rows[t.heap[a]].pos = int32(a)
	t.rows[t.heap[b]].pos = int32(b)
}

// sink restores the heap after the weight at p grew.
func (t *Tracker) sink(p int) {
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
func (t *Tracker) rise(p int) {
	for p > 0 {
		parent := (p - 1) / 2
		if !t.lighter(p, parent) {
			return
		}
		t.swap(p, parent)
		p = parent
	}
}
