package top

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cttrace/cttrace/pkg/table"
)

// seedHeld counts the entries every namespace's table holds now, per
// source, so that "entries held" is right from the first refresh; insert
// and delete events keep it current afterwards. The dump is streamed
// through a History as large as the ranking's own (HistoryCapacity, or the
// kernel map's capacity when smaller): a million-entry table from random
// sources costs that bound, not a key per source, and a source holding
// more than 1/HistoryCapacity of the table keeps its row even when it shows
// up late in the dump. What no row holds is counted in Other.
func (a *Ranking) seedHeld(namespaces []table.Namespace) error {
	capacity := HistoryCapacity
	if a.opts.Capacity > 0 {
		capacity = min(capacity, a.opts.Capacity)
	}
	g := a.opts.Grouping
	tr, err := NewHistory(capacity, g)
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
	held := tr.Read()
	for _, r := range held.Rows {
		a.seed(r.Key, r.Total.Held)
	}
	a.seeded += held.Other.Total.Held
	return errors.Join(errs...)
}

// Tables is what top-sources reads of the tables at each refresh: which
// namespaces use conntrack now (containers come and go) and their entries
// and max, from one statistics read per namespace; and, where the backend
// sees no inserts or deletes (the tracepoint backend), the entries each
// source holds, from a fresh dump.
type Tables struct {
	ranking    *Ranking
	redump     bool
	nextDump   time.Time
	namespaces []table.Namespace
	stats      []table.NamespaceStats
	warn       func(error)
}

// Stats are the namespaces' statistics as the last refresh read them.
func (w *Tables) Stats() []table.NamespaceStats { return w.stats }

// watchTables lists the namespaces and seeds "entries held" from a dump of
// their tables. Call it once the probes are attached: an entry confirmed
// in between is counted by both the dump and its insert event, which errs
// by the entries of a few milliseconds rather than missing them. redump
// re-seeds at refreshes (for a backend that sees no inserts); warn hears
// what could not be read, which leaves figures unknown but stops nothing.
func (a *Ranking) watchTables(redump bool, warn func(error)) *Tables {
	w := &Tables{ranking: a, redump: redump, warn: warn}
	w.rescan()
	w.seed()
	return w
}

// Refresh returns the namespaces' tables for a snapshot at now.
func (w *Tables) Refresh(now time.Time) map[uint32]Namespace {
	tables := w.rescan()
	if w.redump && !now.Before(w.nextDump) {
		w.ranking.resetHeld()
		w.seed()
	}
	return tables
}

func (w *Tables) rescan() map[uint32]Namespace {
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
func (w *Tables) seed() {
	start := time.Now()
	if err := w.ranking.seedHeld(w.namespaces); err != nil {
		w.warn(fmt.Errorf("entries held are incomplete: %w", err))
	}
	w.nextDump = time.Now().Add(9 * time.Since(start))
}
