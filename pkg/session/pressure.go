package session

import (
	"sync/atomic"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/probe"
	"github.com/cttrace/cttrace/pkg/table"
)

// The per-flow hooks' policy (Config.PerFlowOnPressure). They are attached
// when a table's fill reaches DefaultFillHigh of its max, at the first
// refusal, or when the kernel's own failure counters move (an insert
// failure no pressure-only hook sees), whichever comes first; and detached
// once every table is ten points below the mark and nothing of the kind
// came for the quiet period.
//
//   - 90 %: the kernel's gc starts evicting unassured entries at 95 %
//     (gc_worker, net/netfilter/nf_conntrack_core.c, since 4.19), and a
//     table is read once a second (fillEvery): attaching at 90 % sees the
//     evictions and the sources that fill the table before the kernel
//     sheds anything, unless the table gains more than a twentieth of its
//     max in a second, which a flood can; then the first refusal attaches
//     them within maintainEvery.
//   - 80 %: ten points of hysteresis, so that a table hovering at the
//     threshold does not attach and detach every second.
const (
	DefaultFillHigh = 0.90
	fillHysteresis  = 0.10
	fillEvery       = time.Second
)

// DefaultQuietPeriod is how long the per-flow hooks stay attached after the
// last refusal, or the last time a table was above the low mark. Floods
// come in waves with pauses of seconds to minutes between them; detaching
// in a pause would leave the next wave's first refusals without their
// sources. Five minutes without one means the attack, or the overload, is
// over.
const DefaultQuietPeriod = 5 * time.Minute

// Mode is what the kernel side runs now.
type Mode string

const (
	// ModeHealthy: only the hooks the kernel calls when a table is at its
	// max (early_drop) or an insert clashes; refusals counted exactly,
	// without their sources.
	ModeHealthy Mode = "healthy"
	// ModePressure: every hook; refusals counted under their sources, and
	// inserts, evictions and deletes seen.
	ModePressure Mode = "pressure"
)

// pressure attaches and detaches the per-flow hooks. check runs on the
// session's maintenance goroutine only.
type pressure struct {
	quiet    time.Duration
	high     float64                       // fill that attaches them
	tables   func() (tablesReading, error) // the tables now
	seen     uint64                        // refusals counted at the last check
	last     time.Time                     // of the last refusal, or fill above the low mark
	nextFill time.Time
	read     tablesReading // the last reading of the tables
	readOnce bool
	failing  bool          // the kernel's failure counters moved at the last reading
	fillErr  error         // the last failed read of the tables
	warn     func(error)   // hears a read of the tables failing (not each time)
	switches atomic.Uint64 // read by Session.Mode, from any goroutine
}

// tablesReading is what the policy reads of the tables once a second.
type tablesReading struct {
	fill float64 // the fullest table's, of nf_conntrack_max
	// failures sums the kernel's own drop, early_drop and insert_failed
	// counters over the namespaces: they count, among others, the insert
	// failures no pressure-only hook sees (a hash chain too long, a dying
	// entry), which attach the per-flow hooks too.
	failures int64
}

func newPressure(quiet time.Duration, high float64, scan func() ([]table.NamespaceStats, error), warn func(error)) *pressure {
	tables := func() (tablesReading, error) { return readTables(scan) }
	return &pressure{quiet: quiet, high: high, tables: tables, warn: warn}
}

// refusals are what the kernel side counts without the per-flow hooks:
// the table's refusals (early_drop's exit) and the failed clashes
// (nf_ct_resolve_clash's).
func refusals(c event.Counts) uint64 {
	return c.Of(event.ReasonTableFull) + c.Of(event.ReasonAllocFailed) + c.Of(event.ReasonInsertFailed)
}

// hooks is the probe as the policy sees it (probe.Probe).
type hooks interface {
	Produced() (event.Counts, error)
	PerFlow() bool
	SetPerFlow(on bool) error
}

var _ hooks = (*probe.Probe)(nil)

// check switches the hooks if the refusals since the last check, or the
// tables' fill, say so.
func (pr *pressure) check(p hooks, now time.Time) error {
	produced, err := p.Produced()
	if err != nil {
		return err
	}
	n := refusals(produced)
	refused := n > pr.seen
	pr.seen = n
	if refused {
		pr.last = now
	}
	pr.readTables(now)
	switch on := p.PerFlow(); {
	case !on && (refused || pr.failing || pr.read.fill >= pr.high):
		if err := p.SetPerFlow(true); err != nil {
			return err
		}
		pr.last = now
		pr.switches.Add(1)
	case on && now.Sub(pr.last) >= pr.quiet:
		if err := p.SetPerFlow(false); err != nil {
			return err
		}
		pr.switches.Add(1)
	}
	return nil
}

// readTables reads the tables every fillEvery. A failed read keeps the
// last one (fillErr says why): refusals still attach the hooks.
func (pr *pressure) readTables(now time.Time) {
	pr.failing = false
	if now.Before(pr.nextFill) {
		return
	}
	pr.nextFill = now.Add(fillEvery)
	r, err := pr.tables()
	if err != nil && pr.fillErr == nil && pr.warn != nil {
		pr.warn(err)
	}
	if pr.fillErr = err; err != nil {
		return
	}
	pr.failing = pr.readOnce && r.failures > pr.read.failures
	pr.read, pr.readOnce = r, true
	if r.fill >= pr.high-fillHysteresis || pr.failing {
		pr.last = now
	}
}

// readTables reads every namespace that tracks connections: the highest
// fill of nf_conntrack_max (the max is global, the count per namespace; a
// max of 0, unlimited before 6.18, is never full) and the kernel's failure
// counters.
func readTables(scan func() ([]table.NamespaceStats, error)) (tablesReading, error) {
	all, err := scan()
	if err != nil {
		return tablesReading{}, err
	}
	var r tablesReading
	for _, ns := range all {
		if !ns.InUse || ns.Err != nil {
			continue
		}
		r.failures += ns.Stats.Drop + ns.Stats.EarlyDrop + ns.Stats.InsertFailed
		if ns.Stats.Max > 0 {
			r.fill = max(r.fill, float64(ns.Stats.Entries)/float64(ns.Stats.Max))
		}
	}
	return r, nil
}
