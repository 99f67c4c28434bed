package topk

import (
	"time"

	"github.com/cttrace/cttrace/pkg/event"
)

// Counts is what happened to one source's packets and entries.
type Counts struct {
	TableFull    uint64 // new flows refused: table at max, nothing evictable
	AllocFailed  uint64 // new flows refused: no memory for the entry
	InsertFailed uint64 // new entries refused at confirmation
	// EarlyDropVictim counts the source's entries evicted to make room: an
	// entry lost, not a packet refused, so it is not part of Drops.
	EarlyDropVictim uint64
	Inserts         uint64 // entries confirmed
	Deletes         uint64 // entries removed other than by eviction
	// Held is the entries the source holds in the table now: +1 per insert,
	// -1 per delete and per eviction. In an interval it is the net change.
	Held int64
}

// Drops is the source's refused packets: table_full, alloc_failed and
// insert_failed. Evictions are counted apart (EarlyDropVictim) because the
// source that loses an entry is usually not the one being refused.
func (c Counts) Drops() uint64 { return c.TableFull + c.AllocFailed + c.InsertFailed }

// activity is what ranks sources for the bound (see doc.go): a refusal or
// an insert is one thing the source did now. Deletes and evictions are not
// counted because each ends an entry whose insert already was.
func (c Counts) activity() uint64 { return c.Drops() + c.Inserts }

func (c *Counts) add(o Counts) {
	c.TableFull += o.TableFull
	c.AllocFailed += o.AllocFailed
	c.InsertFailed += o.InsertFailed
	c.EarlyDropVictim += o.EarlyDropVictim
	c.Inserts += o.Inserts
	c.Deletes += o.Deletes
	c.Held += o.Held
}

func (c Counts) minus(o Counts) Counts {
	return Counts{
		TableFull:       c.TableFull - o.TableFull,
		AllocFailed:     c.AllocFailed - o.AllocFailed,
		InsertFailed:    c.InsertFailed - o.InsertFailed,
		EarlyDropVictim: c.EarlyDropVictim - o.EarlyDropVictim,
		Inserts:         c.Inserts - o.Inserts,
		Deletes:         c.Deletes - o.Deletes,
		Held:            c.Held - o.Held,
	}
}

// tally is one row's counts, now and at the previous snapshot, so that a
// snapshot can give rates without keeping a second table.
type tally struct {
	now, atSnapshot Counts
	last            event.Reason
	lastDrop        time.Time
}

// noteDrop remembers the latest drop or eviction, for the "last" column.
func (t *tally) noteDrop(r event.Reason, at time.Time) {
	if at.Before(t.lastDrop) {
		return // an earlier CPU's event read late; keep the latest
	}
	t.last, t.lastDrop = r, at
}

// absorb adds o into t, both its counts now and at the previous snapshot,
// so that t's interval counts gain exactly o's interval counts.
func (t *tally) absorb(o *tally) {
	t.now.add(o.now)
	t.atSnapshot.add(o.atSnapshot)
	if o.last != "" {
		t.noteDrop(o.last, o.lastDrop)
	}
}

func (t *tally) export() Row {
	return Row{Counts: t.now, Interval: t.now.minus(t.atSnapshot), Last: t.last, LastDrop: t.lastDrop}
}
