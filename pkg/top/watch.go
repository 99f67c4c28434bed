package top

import (
	"context"
	"iter"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/table"
)

// LiveKernel is a Kernel that runs now: a session of probes attached.
type LiveKernel interface {
	Kernel
	// Backend names the probes' backend, for the view's header.
	Backend() string
	// Sees reports whether the backend sees events of reason r.
	Sees(r event.Reason) bool
	// SourceSampling is the kernel's admission of new sources into its
	// map now (1 in 2^shift), and whether it ever sampled.
	SourceSampling() (shift uint32, sampled bool)
	// Lost is the events the kernel could not deliver, since attach.
	Lost() (uint64, error)
	// Forget drops what the kernel side keeps of namespaces that died.
	Forget(dead []event.Netns) error
}

// partialFlows is a LiveKernel whose per-flow hooks may be detached for
// part of the run (session.Session with --hooks on-pressure).
type partialFlows interface {
	SeesEveryInsert() bool
	// AwaitsPressure says the per-flow hooks are detached now, until a
	// table comes under pressure.
	AwaitsPressure() bool
}

// sharedTables is a LiveKernel that reads the tables for others too
// (session.Session): a refresh takes its reading rather than making one.
type sharedTables interface {
	ScanTables() ([]table.NamespaceStats, error)
}

// scanOf is how a refresh reads the tables behind k.
func scanOf(k LiveKernel) func() ([]table.NamespaceStats, error) {
	if s, ok := k.(sharedTables); ok {
		return s.ScanTables
	}
	return table.Scan
}

// healthyNow is a kernel side's test of its healthy mode (its per-flow
// hooks detached until a table comes under pressure), or nil for one that
// never detaches them.
func healthyNow(k LiveKernel) func() bool {
	if p, ok := k.(partialFlows); ok {
		return p.AwaitsPressure
	}
	return nil
}

// seesEveryInsert says whether k sees every insert and delete of the run.
func seesEveryInsert(k LiveKernel) bool {
	if p, ok := k.(partialFlows); ok {
		return p.SeesEveryInsert()
	}
	return k.Sees(event.ReasonInsert)
}

// Live is the reading of a live kernel behind top-sources, `status
// --watch` and serve's per-source series: the ranking and the tables.
type Live struct {
	k       LiveKernel
	opts    Options
	ranking *Ranking
	tables  *Tables
}

// NewLive starts reading k; call it once the probes are attached. warn
// hears what could not be read (what names it), which leaves figures
// unknown but stops nothing.
func NewLive(k LiveKernel, o Options, warn func(what string, err error)) (*Live, error) {
	r, err := NewRanking(o, time.Now())
	if err != nil {
		return nil, err
	}
	// A backend that sees no inserts or deletes (the tracepoint's), or
	// sees them only under pressure, cannot keep "entries held" current:
	// it comes from a fresh dump at refreshes.
	tables := r.watchTables(scanOf(k), !seesEveryInsert(k), healthyNow(k), func(err error) { warn("tables", err) })
	return &Live{k: k, opts: o, ranking: r, tables: tables}, nil
}

// Snapshot reads the kernel and the tables for a snapshot at now.
func (l *Live) Snapshot(now time.Time) (Snapshot, error) {
	snap, err := l.ranking.Snapshot(now, l.k, l.tables.Refresh(now))
	if err != nil {
		return snap, err
	}
	if err := l.k.Forget(l.ranking.takeDead()); err != nil {
		return snap, err
	}
	snap.Backend, snap.Sort = l.k.Backend(), l.opts.Sort
	var sampled bool
	snap.SampleShift, sampled = l.k.SourceSampling()
	snap.Bounded = snap.Bounded || sampled
	snap.Lost, err = l.k.Lost()
	return snap, err
}

// Tables are the namespaces' tables as the last snapshot read them.
func (l *Live) Tables() []table.NamespaceStats { return l.tables.Stats() }

// Watch shows a snapshot of live every interval of its options (one only,
// with Once) until ctx ends or show fails. redraw asks for the last
// snapshot to be shown again (a terminal was resized); it may be nil.
func Watch(ctx context.Context, live *Live, show func(*Snapshot) error, redraw <-chan struct{}) error {
	o := live.opts
	ticker := time.NewTicker(o.Interval)
	defer ticker.Stop()
	var last *Snapshot
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-redraw:
			if last != nil {
				if err := show(last); err != nil {
					return err
				}
			}
		case now := <-ticker.C:
			snap, err := live.Snapshot(now)
			if err != nil {
				return err
			}
			last = &snap
			if err := show(last); err != nil || o.Once {
				return err
			}
		}
	}
}

// Replay shows a recording (drops -o json or --events-file, cttrace's
// schema) as the live view would have shown it, with the same options: a
// snapshot at every o.Interval of the recording's own time (intervals
// without a record are skipped), and one at its end; o.Once shows only
// the last (as does an Interval of 0). A Recording stands in for the
// kernel's map.
func Replay(records iter.Seq2[*event.Record, error], o Options, show func(*Snapshot) error) error {
	rec := NewRecording(o.Grouping, o.Capacity)
	var ranking *Ranking
	var next, last time.Time
	backend := "replay"
	snapshot := func(at time.Time) error {
		snap, err := ranking.Snapshot(at, rec, nil)
		if err != nil {
			return err
		}
		snap.Backend, snap.Sort = backend, o.Sort
		return show(&snap)
	}
	for r, err := range records {
		if err != nil {
			return err
		}
		at := r.Time()
		if ranking == nil {
			if ranking, err = NewRanking(o, at); err != nil {
				return err
			}
			next = at.Add(o.Interval)
		}
		if !o.Once && o.Interval > 0 && !at.Before(next) {
			if err := snapshot(next); err != nil {
				return err
			}
			next = next.Add((at.Sub(next)/o.Interval + 1) * o.Interval)
		}
		if at.After(last) {
			last = at // records are in order per CPU, not across CPUs
		}
		switch {
		case r.Event != nil:
			rec.Event(r.Event)
		case r.Aggregate != nil:
			rec.Aggregate(r.Aggregate)
		case r.Summary != nil:
			backend = r.Summary.Backend // the recording's
		}
	}
	if ranking == nil {
		return nil
	}
	return snapshot(last)
}
