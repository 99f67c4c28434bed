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
	// healthyProgs run only while the per-flow hooks are detached (the
	// freed-packet program, refusedSourceProgram): attached, they would
	// cost every refused packet of a flood a run that returns at once.
	healthyProgs []string
	healthy      []link.Link
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
// early_drop's exit counts each refusal, its source coming from the freed
// packet where the kernel has drop reasons (bpf/cttrace.bpf.c,
// per_flow_hooks). The order keeps each refusal counted once, and with its
// source where it can be: the side coming is attached, then the kernel side
// is told, then the side going is detached.
func (p *Probe) SetPerFlow(on bool) error {
	p.hooks.mu.Lock()
	defer p.hooks.mu.Unlock()
	if p.hooks.detached || on == p.hooks.perFlowOn || len(p.hooks.perFlowProgs) == 0 {
		return nil
	}
	coming, going := p.hooks.healthyProgs, &p.hooks.perFlow
	if on {
		coming, going = p.hooks.perFlowProgs, &p.hooks.healthy
	}
	links, err := p.attachSet(coming)
	if err != nil {
		return fmt.Errorf("switch the per-flow hooks: %w", err)
	}
	flag := uint32(0)
	if on {
		flag = 1
	}
	if err := p.objs.PerFlowHooks.Set(flag); err != nil {
		closeAll(links)
		return fmt.Errorf("switch the per-flow hooks: %w", err)
	}
	errs := closeAll(*going)
	*going = nil
	if on {
		p.hooks.perFlow = links
	} else {
		p.hooks.healthy = links
	}
	p.hooks.perFlowOn = on
	if errs != nil {
		return fmt.Errorf("switch the per-flow hooks: %w", errs)
	}
	return nil
}

// attachSet attaches the named programs; on a failure it detaches those it
// attached.
func (p *Probe) attachSet(names []string) ([]link.Link, error) {
	var links []link.Link
	for _, name := range names {
		l, err := p.attachOne(name, p.hooks.spec.Programs[name])
		if err != nil {
			closeAll(links)
			return nil, err
		}
		if l != nil {
			links = append(links, l)
		}
	}
	return links, nil
}

func closeAll(links []link.Link) error {
	var errs []error
	for _, l := range links {
		errs = append(errs, l.Close())
	}
	return errors.Join(errs...)
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
