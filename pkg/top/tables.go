package top

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cttrace/cttrace/pkg/table"
	"github.com/cttrace/cttrace/pkg/topk"
)

// SeedHeld counts the entries every namespace's table holds now, per
// source grouped as g, so that "entries held" is right from the first
// refresh; insert and delete events keep it current afterwards. The dump is
// streamed through a Space-Saving counter of the aggregator's capacity: a
// million-entry table from random sources costs that bound, not a key per
// source, and a source holding many entries keeps its row even when it
// shows up late in the dump. What no row holds is counted in Other.
func (a *Aggregator) SeedHeld(namespaces []table.Namespace, g topk.Grouping) error {
	capacity := a.opts.Capacity
	if capacity <= 0 || capacity > topk.MaxCapacity {
		capacity = topk.DefaultCapacity
	}
	tr, err := topk.NewTracker(capacity, g)
	if err != nil {
		return err
	}
	var errs []error
	for _, ns := range namespaces {
		if len(a.opts.Netns) > 0 && !a.opts.Netns[ns.Inode] {
			continue
		}
		err := ns.DumpBySource(func(src netip.Addr, _ uint32) error {
			tr.AddHeld(g.KeyFor(ns.Inode, src), 1)
			return nil
		})
		if err != nil && !errors.Is(err, table.ErrDumpInterrupted) {
			errs = append(errs, fmt.Errorf("dump %s: %w", ns, err))
		}
	}
	snap := tr.Snapshot()
	for _, r := range snap.Rows {
		a.Seed(Key{Netns: r.Netns, Prefix: r.Prefix}, r.Held)
	}
	a.seeded += snap.Other.Held
	return errors.Join(errs...)
}

// TableWatch is what top-sources reads of the tables at each refresh:
// which namespaces use conntrack now (containers come and go) and their
// entries and max, from one statistics read per namespace; and, where the
// backend sees no inserts or deletes (tracepoint), the entries each source
// holds, from a fresh dump.
type TableWatch struct {
	agg        *Aggregator
	grouping   topk.Grouping
	redump     bool
	nextDump   time.Time
	namespaces []table.Namespace
	stats      []table.NamespaceStats
	warn       func(error)
}

// Stats are the namespaces' statistics as the last refresh read them.
func (w *TableWatch) Stats() []table.NamespaceStats { return w.stats }

// WatchTables lists the namespaces and seeds "entries held" from a dump of
// their tables. Call it once the probes are attached: an entry confirmed
// in between is counted by both the dump and its insert event, which errs
// by the entries of a few milliseconds rather than missing them. redump
// re-seeds at refreshes (for a backend that sees no inserts); warn hears
// what could not be read, which leaves figures unknown but stops nothing.
func (a *Aggregator) WatchTables(g topk.Grouping, redump bool, warn func(error)) *TableWatch {
	w := &TableWatch{agg: a, grouping: g, redump: redump, warn: warn}
	w.rescan()
	w.seed()
	return w
}

// Refresh returns the namespaces' tables for a snapshot at now.
func (w *TableWatch) Refresh(now time.Time) map[uint32]Namespace {
	tables := w.rescan()
	if w.redump && !now.Before(w.nextDump) {
		w.agg.ResetHeld()
		w.seed()
	}
	return tables
}

func (w *TableWatch) rescan() map[uint32]Namespace {
	inUse, err := table.InUse()
	if err != nil {
		w.warn(fmt.Errorf("list network namespaces: %w", err))
		return map[uint32]Namespace{}
	}
	w.namespaces, w.stats = w.namespaces[:0], inUse
	out := make(map[uint32]Namespace, len(inUse))
	for _, ns := range inUse {
		w.namespaces = append(w.namespaces, ns.Namespace)
		if ns.Err != nil {
			continue // its entries are shown as unknown
		}
		out[ns.Inode] = Namespace{Netns: ns.Inode, Entries: ns.Stats.Entries, Max: uint32(ns.Stats.Max)}
	}
	return out
}

// seed dumps the tables; a dump of a huge table takes a while, so the next
// one waits nine times as long: at most a tenth of the time is spent
// dumping.
func (w *TableWatch) seed() {
	start := time.Now()
	if err := w.agg.SeedHeld(w.namespaces, w.grouping); err != nil {
		w.warn(fmt.Errorf("entries held are incomplete: %w", err))
	}
	w.nextDump = time.Now().Add(9 * time.Since(start))
}
