package probe

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// perFlowHooks are the functions every admitted flow passes through: its
// allocation, its confirmation, and its removal (with gc_worker, which
// only tells the removals apart). A host that creates tens of thousands of
// flows a second and drops none pays for each of their programs on every
// flow; early_drop() and nf_ct_resolve_clash(), which the kernel calls only
// when a table is at its max or an insert clashes, stay attached.
var perFlowHooks = map[string]bool{
	"__nf_conntrack_alloc":   true,
	"__nf_conntrack_confirm": true,
	"nf_ct_delete":           true,
	"gc_worker":              true,
}

// hookSet is what SetPerFlow needs to attach and detach the per-flow hooks
// while the probe runs.
type hookSet struct {
	mu           sync.Mutex
	spec         *ebpf.CollectionSpec
	symbols      map[string]string
	perFlowProgs []string    // the programs on perFlowHooks
	perFlow      []link.Link // their links, while attached
	perFlowOn    bool
	detached     bool
}

// PerFlow says whether the per-flow hooks are attached now.
func (p *Probe) PerFlow() bool {
	p.hooks.mu.Lock()
	defer p.hooks.mu.Unlock()
	return p.hooks.perFlowOn
}

// HasPerFlowHooks says whether this backend has per-flow hooks at all: the
// tracepoint backend sees only dropped packets, so it never runs on an
// admitted flow.
func (p *Probe) HasPerFlowHooks() bool { return len(p.hooks.perFlowProgs) > 0 }

// SetPerFlow attaches the per-flow hooks (on) or detaches them. With them,
// every refusal is counted under its source and inserts, evictions and
// deletes are seen; without them, a healthy table runs no program, and
// early_drop's exit counts each refusal, without its source
// (bpf/cttrace.bpf.c, per_flow_hooks). The order keeps each refusal
// counted once while both are attached: the kernel side is told after
// attaching and before detaching.
func (p *Probe) SetPerFlow(on bool) error {
	p.hooks.mu.Lock()
	defer p.hooks.mu.Unlock()
	if p.hooks.detached || on == p.hooks.perFlowOn || len(p.hooks.perFlowProgs) == 0 {
		return nil
	}
	if !on {
		p.hooks.perFlowOn = false
		errs := []error{p.objs.PerFlowHooks.Set(uint32(0))}
		for _, l := range p.hooks.perFlow {
			errs = append(errs, l.Close())
		}
		p.hooks.perFlow = nil
		if err := errors.Join(errs...); err != nil {
			return fmt.Errorf("detach the per-flow hooks: %w", err)
		}
		return nil
	}
	for _, name := range p.hooks.perFlowProgs {
		l, err := p.attachOne(name, p.hooks.spec.Programs[name])
		if err != nil {
			for _, l := range p.hooks.perFlow {
				l.Close()
			}
			p.hooks.perFlow = nil
			return fmt.Errorf("attach the per-flow hooks: %w", err)
		}
		if l != nil {
			p.hooks.perFlow = append(p.hooks.perFlow, l)
		}
	}
	if err := p.objs.PerFlowHooks.Set(uint32(1)); err != nil {
		return fmt.Errorf("attach the per-flow hooks: %w", err)
	}
	p.hooks.perFlowOn = true
	return nil
}

// FlowRuns sums how many times the kernel ran this probe's programs on
// conntrack's own functions, while the caller keeps run statistics on
// (ebpf.EnableStats): what the tests measure "programs run per admitted
// flow" with. The freed-packet program (refusedSourceProgram) is left out:
// it runs on every packet the kernel frees as dropped, whatever its flow
// (in the tests, the datagrams a never-read socket drops: 0.7 to 1 a flow
// in the 6.1 and 7.2 guests), and returns after two comparisons unless a
// refusal waits for its source.
func (p *Probe) FlowRuns() (uint64, error) {
	var n uint64
	for name, prog := range p.coll.Programs {
		if name == refusedSourceProgram {
			continue
		}
		st, err := prog.Stats()
		if err != nil {
			return 0, fmt.Errorf("read %s's runs: %w", name, err)
		}
		n += st.RunCount
	}
	return n, nil
}
