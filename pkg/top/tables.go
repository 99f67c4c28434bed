package top

import (
	"errors"
	"fmt"
	"net/netip"

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

// Tables reads every namespace's entry count and limit for the header. A
// namespace that went away meanwhile is left out.
func Tables(namespaces []table.Namespace) map[uint32]Namespace {
	out := make(map[uint32]Namespace, len(namespaces))
	for _, ns := range namespaces {
		st, err := ns.Stats()
		if err != nil {
			continue
		}
		out[ns.Inode] = Namespace{Netns: ns.Inode, Entries: st.Entries, Max: uint32(st.Max)}
	}
	return out
}
