package top

import "github.com/cttrace/cttrace/pkg/event"

// Counts are what a source (or a namespace, or "other") did: its events by
// reason, and the entries it holds. Drops and evictions are event.Counts':
// Reason.IsDrop and Reason.IsEviction say what they add up.
type Counts struct {
	Events event.Counts
	// Held is the entries held in the table now: +1 per insert, -1 per
	// delete and per eviction. Over an interval, the net change.
	Held int64
}

// Drops are the packets refused: table_full, alloc_failed, insert_failed.
func (c Counts) Drops() uint64 { return c.Events.Drops() }

// Evicted are the entries evicted, by early_drop() or by the gc worker.
// The source that loses an entry is usually not the one being refused, so
// evictions are not drops.
func (c Counts) Evicted() uint64 { return c.Events.Evictions() }

// EarlyDrops are the evictions the kernel counts as early_drop.
func (c Counts) EarlyDrops() uint64 { return c.Events.Of(event.ReasonEarlyDrop) }

// GCEvicted are the gc worker's evictions, which the kernel's early_drop
// counter leaves out.
func (c Counts) GCEvicted() uint64 { return c.Events.Of(event.ReasonGCEvict) }

// Inserts are the entries confirmed.
func (c Counts) Inserts() uint64 { return c.Events.Of(event.ReasonInsert) }

// Deletes are the entries removed other than by eviction.
func (c Counts) Deletes() uint64 { return c.Events.Of(event.ReasonDelete) }

// activity is what ranks sources for the history's bound (doc.go): a
// refusal or an insert is one thing the source did now. Deletes and
// evictions are not counted: each ends an entry whose insert already was.
func (c Counts) activity() uint64 { return c.Drops() + c.Inserts() }

// heldChange is the change in entries held that events make.
func heldChange(e event.Counts) int64 {
	return int64(e.Of(event.ReasonInsert)) - int64(e.Evictions()) - int64(e.Of(event.ReasonDelete))
}

func (c *Counts) add(o Counts) {
	c.Events = c.Events.Plus(o.Events)
	c.Held += o.Held
}

// minus is c - o for counts that only grow from o to c (a row's counts
// now and at an earlier snapshot); Held may go either way.
func (c Counts) minus(o Counts) Counts {
	return Counts{Events: c.Events.Minus(o.Events), Held: c.Held - o.Held}
}
