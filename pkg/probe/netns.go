package probe

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"

	"github.com/cttrace/cttrace/pkg/event"
)

// The kernel side counts by a namespace's identity (bpf/conn.bpf.h,
// net_id) and keeps its inode number beside each count as its name.
// namespaces is what the map readers keep of the namespaces that died,
// whose counts a per-CPU slot may still hold (Forget):
//   - a cookie is never given to another namespace: the dead one's slots
//     go to the next namespace that counts there, and until then its
//     counts are left out (forgotten);
//   - an identity that is an inode number (no cookies, 5.10) comes back
//     with the next namespace of that inode, which goes on counting in the
//     dead one's slots: what each slot held when it died is taken off
//     (baseline). Handing its slots over (dead_netns) would take them from
//     that next namespace too, and its counts with them.
type namespaces struct {
	mu        sync.Mutex // the map readers run on more than one goroutine (serve)
	forgotten map[uint64]bool
	baseline  map[uint64]map[int]cttraceNetnsSlot // by identity, by CPU
}

func newNamespaces() *namespaces {
	return &namespaces{forgotten: map[uint64]bool{}, baseline: map[uint64]map[int]cttraceNetnsSlot{}}
}

func (n *namespaces) isForgotten(id uint64) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.forgotten[id]
}

// NamespaceCounts returns, per network namespace, the events the kernel
// counted since attach, by reason and by detail (with
// SourceOptions.Enabled). It adds every CPU's counts of the per-CPU slots
// (netns_slots, where most events count) and of the LRU map behind them
// (netns_totals): each event counts in one of the two. Namespaces Forget
// was told of are left out.
func (p *Probe) NamespaceCounts() (map[event.Netns]event.NamespaceCounts, error) {
	byID := map[uint64]*counted{}
	inSlots := map[uint64]bool{}
	p.ns.mu.Lock()
	defer p.ns.mu.Unlock()
	add := func(id uint64, inum uint32, events *[cttraceCtEventTypeCT_EV_MAX]uint64, details *[cttraceCtDetailCT_DETAIL_MAX]uint64) {
		if p.ns.forgotten[id] {
			return
		}
		c := byID[id]
		if c == nil {
			c = &counted{}
			byID[id] = c
		}
		// Each CPU's copy names the namespace once it counted there; one
		// that never did is zero.
		c.inum = max(c.inum, inum)
		c.Events = c.Events.Plus(event.CountsFromKernel(*events))
		for d, n := range details {
			c.Details[d] += n
		}
	}
	var id uint64
	var perCPU []cttraceNetnsStats
	it := p.objs.NetnsTotals.Iterate()
	for it.Next(&id, &perCPU) {
		for i := range perCPU {
			add(id, perCPU[i].Inum, &perCPU[i].Events, &perCPU[i].Details)
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read namespace totals: %w", err)
	}
	var slot uint32
	var slots []cttraceNetnsSlot
	it = p.objs.NetnsSlots.Iterate()
	for it.Next(&slot, &slots) {
		for i := range slots {
			if id := slots[i].NetnsId; id != 0 { // 0: not claimed on this CPU
				inSlots[id] = true
				since := p.ns.sinceDeath(i, &slots[i])
				add(id, since.Inum, &since.Events, &since.Details)
			}
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read namespace slots: %w", err)
	}
	// What is kept of the dead is bounded by the slots that still hold
	// them: the other maps were swept.
	for id := range p.ns.forgotten {
		if !inSlots[id] {
			delete(p.ns.forgotten, id)
		}
	}
	out := make(map[event.Netns]event.NamespaceCounts, len(byID))
	for id, c := range byID {
		if p.ns.baseline[id] != nil && c.NamespaceCounts == (event.NamespaceCounts{}) {
			continue // died, and no namespace of its inode counted since
		}
		out[event.Netns{ID: id, Inode: c.inum}] = c.NamespaceCounts
	}
	return out, nil
}

// sinceDeath is what CPU cpu's slot counted since the namespace holding it
// by inode number died: all it counted for any other.
func (n *namespaces) sinceDeath(cpu int, s *cttraceNetnsSlot) cttraceNetnsSlot {
	b, ok := n.baseline[s.NetnsId][cpu]
	if !ok {
		return *s
	}
	out := *s
	for i := range out.Events {
		if out.Events[i] < b.Events[i] { // not the slot it was: never, with no takeover
			delete(n.baseline[s.NetnsId], cpu)
			return *s
		}
		out.Events[i] -= b.Events[i]
	}
	for i := range out.Details {
		out.Details[i] -= min(b.Details[i], out.Details[i])
	}
	return out
}

// keepBaseline notes what id's slots hold now, on every CPU, as its death
// (an identity that is an inode number).
func (p *Probe) keepBaseline(id uint64) error {
	var slots []cttraceNetnsSlot
	if err := p.objs.NetnsSlots.Lookup(uint32(id%uint64(p.objs.NetnsSlots.MaxEntries())), &slots); err != nil {
		return fmt.Errorf("read namespace slot: %w", err)
	}
	byCPU := map[int]cttraceNetnsSlot{}
	for cpu := range slots {
		if slots[cpu].NetnsId == id {
			byCPU[cpu] = slots[cpu]
		}
	}
	if len(byCPU) == 0 {
		delete(p.ns.baseline, id)
	} else {
		p.ns.baseline[id] = byCPU
	}
	return nil
}

// counted is one namespace's counts as NamespaceCounts adds them up.
type counted struct {
	event.NamespaceCounts
	inum uint32
}

// Forget drops what the kernel side keeps of namespaces that died: their
// per-namespace counts (netns_totals; a per-CPU slot goes to the next
// namespace that counts there, told by dead_netns) and their sources and
// aggregates, which the LRU maps would otherwise keep until pushed out.
// From now on NamespaceCounts, Sources and Aggregated leave them out.
func (p *Probe) Forget(dead []event.Netns) error {
	if len(dead) == 0 {
		return nil
	}
	ids := map[uint64]bool{}
	var errs []error
	p.ns.mu.Lock()
	for _, ns := range dead {
		ids[ns.ID] = true
		if ns.Cookie() == 0 {
			if err := p.keepBaseline(ns.ID); err != nil {
				errs = append(errs, fmt.Errorf("forget namespace %d: %w", ns.Inode, err))
			}
			continue
		}
		p.ns.forgotten[ns.ID] = true
	}
	p.ns.mu.Unlock()
	for _, ns := range dead {
		if ns.Cookie() != 0 {
			if err := p.objs.DeadNetns.Put(ns.ID, uint8(1)); err != nil {
				errs = append(errs, fmt.Errorf("forget namespace %d: %w", ns.Inode, err))
			}
		}
		if err := p.objs.NetnsTotals.Delete(ns.ID); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("forget namespace %d: %w", ns.Inode, err))
		}
	}
	errs = append(errs, sweep[cttraceSrcKey, cttraceSrcStats](p.objs.Sources, func(k *cttraceSrcKey) bool { return ids[k.NetnsId] }))
	errs = append(errs, sweep[cttraceAggKey, cttraceAggValue](p.objs.Aggregated, func(k *cttraceAggKey) bool { return ids[k.NetnsId] }))
	return errors.Join(errs...)
}

// sweep deletes the entries of a hash map whose key dead says so. Entries
// that go meanwhile (an LRU map pushing them out) are not an error.
func sweep[K, V any](m *ebpf.Map, dead func(*K) bool) error {
	var gone []K
	err := eachEntry(m, func(k *K, _ *V) error {
		if dead(k) {
			gone = append(gone, *k)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for i := range gone {
		if err := m.Delete(&gone[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("forget in %s: %w", m, err)
		}
	}
	return nil
}
