package top

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
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
func (a *Ranking) seedHeld(namespaces []table.NamespaceStats) error {
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
		netns := netnsOf(&ns)
		err := ns.DumpBySource(func(src netip.Addr, _ uint32) error {
			tr.AddHeld(g.KeyFor(netns, src), 1)
			a.seeded[netns]++
			return nil
		})
		if err != nil && !errors.Is(err, table.ErrDumpInterrupted) {
			errs = append(errs, fmt.Errorf("dump %s: %w", ns, err))
		}
	}
	for _, r := range tr.Read().Rows {
		a.seed(r.Key, r.Total.Held)
	}
	return errors.Join(errs...)
}

// Tables is what top-sources reads of the tables at each refresh: which
// namespaces use conntrack now (containers come and go) and their entries
// and max, from one statistics read per namespace; and, where the backend
// sees no inserts or deletes (the tracepoint backend), the entries each
// source holds, from a fresh dump.
type Tables struct {
	ranking  *Ranking
	scan     func() ([]table.NamespaceStats, error)
	redump   bool
	nextDump time.Time
	stats    []table.NamespaceStats
	warn     func(error)
	// healthy says the kernel side runs without its per-flow hooks now
	// (nil: it never switches them): then the tables are dumped only every
	// healthyDumpEvery, and slowDumps says the next dump was so scheduled.
	healthy   func() bool
	slowDumps bool
}

// healthyDumpEvery is how often entries held are dumped afresh while no
// table is under pressure (session.Mode healthy): who holds the entries
// matters once a table fills, when the per-flow hooks come (at 90 % of the
// max) and the dumps follow every refresh again. Dumping a large table at
// every refresh would cost a tenth of a CPU on a host that drops nothing:
// measured in the 6.12 guest with 20,000-entry tables, top-sources spent
// 2,250 to 3,100 ms of CPU per 100,000 admitted flows dumping, against
// 1,250 to 1,450 counting every flow's events.
const healthyDumpEvery = 30 * time.Second

// Stats are the namespaces' statistics as the last refresh read them.
func (w *Tables) Stats() []table.NamespaceStats { return w.stats }

// watchTables lists the namespaces (with scan) and seeds "entries held"
// from a dump of their tables. Call it once the probes are attached: an entry confirmed
// in between is counted by both the dump and its insert event, which errs
// by the entries of a few milliseconds rather than missing them. redump
// re-seeds at refreshes (for a backend that sees no inserts); warn hears
// what could not be read, which leaves figures unknown but stops nothing.
func (a *Ranking) watchTables(scan func() ([]table.NamespaceStats, error), redump bool, healthy func() bool, warn func(error)) *Tables {
	w := &Tables{ranking: a, scan: scan, redump: redump, healthy: healthy, warn: warn}
	a.heldFromDumps = redump
	w.rescan()
	w.seed()
	return w
}

// Refresh returns the namespaces' tables for a snapshot at now.
func (w *Tables) Refresh(now time.Time) map[uint32]Namespace {
	tables := w.rescan()
	// Pressure came since a dump scheduled for a healthy table: dump now.
	due := !now.Before(w.nextDump) || (w.slowDumps && !w.isHealthy())
	if w.redump && due {
		w.ranking.resetHeld()
		w.seed()
	}
	return tables
}

// isHealthy says whether the kernel side runs without its per-flow hooks.
func (w *Tables) isHealthy() bool { return w.healthy != nil && w.healthy() }

// rescan lists the namespaces in use now, by inode number (nil when they
// could not be listed: then nothing is known to have died).
func (w *Tables) rescan() map[uint32]Namespace {
	all, err := w.scan()
	if err != nil {
		w.warn(fmt.Errorf("list network namespaces: %w", err))
		return nil
	}
	// A new slice each time: a reading handed over (serve's) keeps the last.
	w.stats = make([]table.NamespaceStats, 0, len(all))
	out := make(map[uint32]Namespace, len(all))
	for _, ns := range all {
		n := Namespace{Netns: netnsOf(&ns), Entries: -1, listed: ns.InUse} // unknown when its statistics could not be read
		if ns.Err == nil {
			n.Entries, n.Max = ns.Stats.Entries, uint32(ns.Stats.Max)
		}
		out[ns.Inode] = n
		if ns.InUse {
			w.stats = append(w.stats, ns)
		}
	}
	return out
}

// netnsOf is a listed namespace's identity, as the kernel side keys it:
// its cookie, or, where the kernel cannot tell it, its inode number
// (probe.FeatNetnsCookie decides the same for both).
func netnsOf(ns *table.NamespaceStats) event.Netns {
	if ns.Cookie != 0 {
		return event.Netns{ID: ns.Cookie, Inode: ns.Inode}
	}
	return event.NetnsOf(ns.Inode)
}

// seed dumps the tables; a dump of a huge table takes a while, so the next
// one waits nine times as long: at most a tenth of the time is spent
// dumping.
func (w *Tables) seed() {
	start := time.Now()
	if err := w.ranking.seedHeld(w.stats); err != nil {
		w.warn(fmt.Errorf("entries held are incomplete: %w", err))
	}
	took := time.Since(start)
	w.nextDump = start.Add(10 * took)
	if w.slowDumps = w.isHealthy(); w.slowDumps {
		w.nextDump = start.Add(max(healthyDumpEvery, 10*took))
	}
}
