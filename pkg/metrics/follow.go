package metrics

import (
	"context"
	"errors"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/host"
	"github.com/cttrace/cttrace/pkg/probe"
	"github.com/cttrace/cttrace/pkg/session"
	"github.com/cttrace/cttrace/pkg/table"
	"github.com/cttrace/cttrace/pkg/top"
)

// Kernel is what the exporter reads: a live session.
type Kernel = top.LiveKernel

// Follow refreshes the exporter from k every interval until ctx ends: the
// per-namespace counts, the tables and the top sources (top-sources' own
// reading, each namespace's topN ranked). A failed read is counted
// (cttrace_read_errors_total), told to warn, and the next one tried: a
// scrape shows it. Only the end of nf_conntrack (probe.ErrConntrackGone)
// ends it with an error: a run that lost the kernel side must not look
// healthy.
func (e *Exporter) Follow(ctx context.Context, k Kernel, interval time.Duration, warn func(what string, err error)) error {
	failed := func(what string, err error) {
		e.Failed(what)
		warn(what, err)
	}
	o := top.DefaultOptions()
	o.Limit, o.Interval, o.Netns = top.HistoryCapacity, interval, e.netns
	// Only the topN a namespace are exported: ranking the rest each second
	// would copy every row of the history for nothing.
	o.PerNetns = max(e.topN, 1)
	live, err := top.NewLive(k, o, failed)
	if err != nil {
		return err
	}
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-ticker.C:
			r, err := read(now, k, live)
			if errors.Is(err, probe.ErrConntrackGone) {
				return err
			}
			if err != nil {
				failed("sources", err)
				continue
			}
			e.Update(r)
		}
	}
}

// read is one Reading of k at now.
func read(now time.Time, k Kernel, live *top.Live) (*Reading, error) {
	snap, err := live.Snapshot(now)
	if err != nil {
		return nil, err
	}
	r := &Reading{Time: now, Snapshot: &snap, Tables: shown(live.Tables(), snap.Namespaces), Lost: snap.Lost}
	counted, err := k.NamespaceCounts()
	if err != nil {
		return nil, err
	}
	// The living namespaces only, those the snapshot shows: a dead one's
	// inode may already name the next, and its series must go with it.
	r.Namespaces = make(map[event.Netns]event.NamespaceCounts, len(snap.Namespaces))
	for _, ns := range snap.Namespaces {
		if c, ok := counted[ns.Netns]; ok {
			r.Namespaces[ns.Netns] = c
		}
	}
	r.Buckets, _ = host.ConntrackBuckets()
	if m, ok := k.(moder); ok {
		r.Mode, r.ModeSwitches = m.Mode()
	}
	return r, nil
}

// moder is a kernel side that switches its per-flow hooks (session.Session).
type moder interface {
	Mode() (session.Mode, uint64)
}

// shown keeps the tables of the namespaces the snapshot shows: those
// chosen with --netns, and only the living.
func shown(tables []table.NamespaceStats, namespaces []top.Namespace) []table.NamespaceStats {
	inodes := make(map[uint32]bool, len(namespaces))
	for _, ns := range namespaces {
		inodes[ns.Netns.Inode] = true
	}
	out := make([]table.NamespaceStats, 0, len(tables))
	for _, t := range tables {
		if inodes[t.Inode] {
			out = append(out, t)
		}
	}
	return out
}
