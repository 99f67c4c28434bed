package topk

import (
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
}

// Snapshot returns every row, in no particular order (the view ranks
// them: pkg/top), and starts a new interval. It allocates only the rows it
// returns.
func (t *Tracker) Snapshot() Snapshot {
	now := time.Now()
	s := Snapshot{
		Other:     t.other.export(),
		Totals:    t.totals.export(),
		Tracked:   len(t.rows),
		Capacity:  t.capacity,
		Evictions: t.evictions,
		Interval:  now.Sub(t.since),
		Rows:      make([]Row, len(t.rows)),
	}
	for i := range t.rows {
		s.Rows[i] = t.export(&t.rows[i])
	}
	t.startInterval(now)
	return s
}

func (t *Tracker) export(r *row) Row {
	out := r.tally.export()
	out.Key, out.Err = r.key, r.err
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
