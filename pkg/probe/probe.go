package probe

import (
	"bufio"
	"cmp"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"

	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/host"
)

// Probe is one backend's programs, loaded and attached.
type Probe struct {
	Backend Backend
	// Missing lists what this run cannot see because an optional hook did
	// not attach, in words for the operator.
	Missing []string
	coll    *ebpf.Collection // the programs
	objs    loadedObjects
	links   []link.Link
	sources SourceOptions
	ns      *namespaces
	hooks   hookSet
	// removesExactly says the kernel returns an entry's counts as it
	// deletes it (canRemoveExactly).
	removesExactly bool
}

// specObjects and loadedObjects are bpf2go's typed views of the object's
// maps and variables, before and after loading: a map or variable renamed
// in bpf/ fails the build here, not a lookup by name at run time. Programs
// are handled by name, as the backend decides which are loaded.
type specObjects struct {
	cttraceMapSpecs
	cttraceVariableSpecs
}

type loadedObjects struct {
	cttraceMaps
	cttraceVariables
}

// Options says what to load.
type Options struct {
	// StreamMask selects the kernel event types (bit 1<<type) written to the
	// ring buffer; every type is counted whatever the mask.
	StreamMask uint32
	// RingBytes sizes the ring buffer: a power of two, a multiple of the
	// page size. Zero keeps the object's default (4 MiB).
	RingBytes uint32
	// Sources turns on per-source counting in the kernel.
	Sources SourceOptions
	// Stream bounds the stream and selects namespaces.
	Stream StreamOptions
	// PerFlowOnPressure leaves the per-flow hooks detached until SetPerFlow
	// attaches them (hooks.go); else they are attached for the whole run.
	PerFlowOnPressure bool
}

// optionalHooks are functions whose absence only costs detail: the compiler
// may inline them (both are static), and a kernel without them still shows
// every drop.
var optionalHooks = map[string]string{
	"gc_worker":           "evictions by the gc worker are reported as deletes",
	"nf_ct_resolve_clash": "resolved clashes are not counted and failed ones are reported as chain_too_long",
}

// refusedSourceProgram is the fentry and kprobe backends' tp_btf program:
// it gives the refusals early_drop's exit counts, while the per-flow hooks
// are detached, their source from the freed packet (bpf/cttrace.bpf.c,
// refused_packet_freed). It needs the kernel's drop reasons (5.17+).
const refusedSourceProgram = "tp_btf_kfree_skb_source"

// hasDropReasons says whether kfree_skb carries drop reasons here.
func hasDropReasons(f *Features) bool {
	if f == nil {
		return false
	}
	x, _ := f.Get(FeatDropReason)
	return x.Usable
}

// sectionBackend maps a program's ELF section prefix to its backend: each
// backend's wrappers live in sections of their own kind.
func sectionBackend(section string) Backend {
	switch kind, _, _ := strings.Cut(section, "/"); kind {
	case "fentry", "fexit":
		return BackendFentry
	case "kprobe", "kretprobe":
		return BackendKprobe
	case "tp_btf":
		return BackendTracepoint
	}
	return ""
}

// Attach loads the programs of backend b (never auto) and attaches them. The
// other backends' programs are deleted from the spec before load, so a kernel
// that refuses them never sees them.
func Attach(f *Features, b Backend, opts Options) (*Probe, error) {
	spec, err := loadCttrace()
	if err != nil {
		return nil, fmt.Errorf("read bpf object: %w", err)
	}
	// A kernel that splits nf_ct_delete (deleteHookSymbol) has no BTF for
	// the clone, so fentry cannot reach it: there the delete hook is the
	// kprobe backend's program on the clone, whatever the backend.
	clone := ""
	if b != BackendTracepoint {
		clone = deleteHookSymbol()
	}
	for name, p := range spec.Programs {
		keep := sectionBackend(p.SectionName) == b
		if clone != "" && p.AttachTo == "nf_ct_delete" {
			keep = strings.HasPrefix(p.SectionName, "kprobe/")
		}
		if name == refusedSourceProgram {
			keep = b != BackendTracepoint && opts.PerFlowOnPressure && hasDropReasons(f)
		}
		if !keep {
			delete(spec.Programs, name)
		}
	}
	if len(spec.Programs) == 0 {
		return nil, fmt.Errorf("no programs for backend %q", b)
	}
	var specs specObjects
	if err := spec.Assign(&specs); err != nil {
		return nil, fmt.Errorf("bpf object: %w", err)
	}
	opts.Sources = opts.Sources.withDefaults()
	if err := configure(&specs, f, opts, clone != ""); err != nil {
		return nil, err
	}
	symbols := map[string]string{}
	if clone != "" {
		symbols["nf_ct_delete"] = clone
	}
	collOpts := ebpf.CollectionOptions{}
	if f != nil && f.ConntrackModule {
		// nf_conntrack's own types live in its split BTF, not in vmlinux.
		mod, err := btf.LoadKernelModuleSpec("nf_conntrack")
		if err != nil {
			return nil, fmt.Errorf("load nf_conntrack btf: %w", err)
		}
		collOpts.Programs.ExtraRelocationTargets = []*btf.Spec{mod}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, collOpts)
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load %s programs: %+v", b, ve)
		}
		return nil, fmt.Errorf("load %s programs: %w", b, err)
	}
	p := &Probe{Backend: b, coll: coll, sources: opts.Sources, ns: newNamespaces()}
	if err := coll.Assign(&p.objs); err != nil {
		coll.Close()
		return nil, fmt.Errorf("bpf object: %w", err)
	}
	p.removesExactly = canRemoveExactly(p.objs.Sources)
	// The filter is filled before the programs are attached, so that no
	// event of another namespace is streamed meanwhile.
	if err := p.selectNamespaces(opts.Stream.Netns); err != nil {
		p.Close()
		return nil, err
	}
	if err := p.attachAll(spec, symbols, opts.PerFlowOnPressure); err != nil {
		p.Close()
		return nil, err
	}
	if err := p.RefreshMax(); err != nil {
		p.Close()
		return nil, err
	}
	return p, nil
}

// attachAll attaches every program but, with Options.PerFlowOnPressure, the
// per-flow ones, which it keeps for SetPerFlow; symbols maps a kprobe's
// function to the symbol to attach to instead (deleteHookSymbol).
func (p *Probe) attachAll(spec *ebpf.CollectionSpec, symbols map[string]string, onPressure bool) error {
	p.hooks.symbols = symbols
	for name, ps := range spec.Programs {
		switch {
		case perFlowHooks[ps.AttachTo]:
			p.hooks.perFlowProgs = append(p.hooks.perFlowProgs, name)
		case name == refusedSourceProgram:
			p.hooks.healthyProgs = append(p.hooks.healthyProgs, name)
		}
	}
	p.hooks.spec = spec
	if !onPressure && len(p.hooks.perFlowProgs) > 0 {
		// Before any program runs: early_drop's exit leaves refusals to
		// the allocation's (bpf/cttrace.bpf.c, per_flow_hooks).
		if err := p.objs.PerFlowHooks.Set(uint32(1)); err != nil {
			return fmt.Errorf("set per-flow hooks: %w", err)
		}
	}
	for name, ps := range spec.Programs {
		if onPressure && perFlowHooks[ps.AttachTo] || name == refusedSourceProgram {
			continue
		}
		l, err := p.attachOne(name, ps)
		if err != nil {
			return err
		}
		if l != nil {
			p.links = append(p.links, l)
		}
	}
	p.hooks.perFlowOn = !onPressure && len(p.hooks.perFlowProgs) > 0
	if p.hooks.perFlowOn {
		return nil
	}
	var err error
	p.hooks.healthy, err = p.attachSet(p.hooks.healthyProgs)
	return err
}

// attachOne attaches one program, or notes in Missing an optional hook
// that would not attach (and returns no link).
func (p *Probe) attachOne(name string, ps *ebpf.ProgramSpec) (link.Link, error) {
	l, err := attachProgram(ps, p.coll.Programs[name], cmp.Or(p.hooks.symbols[ps.AttachTo], ps.AttachTo))
	if err == nil {
		return l, nil
	}
	why, ok := optionalHooks[ps.AttachTo]
	if name == refusedSourceProgram {
		why, ok = "refusals counted while the per-flow hooks are detached have no source", true
	}
	if !ok {
		return nil, fmt.Errorf("attach %s (%s): %w", name, ps.SectionName, err)
	}
	prefix := ps.AttachTo + " not hooked"
	if !slices.ContainsFunc(p.Missing, func(m string) bool { return strings.HasPrefix(m, prefix) }) {
		p.Missing = append(p.Missing, fmt.Sprintf("%s (%v): %s", prefix, err, why))
	}
	return nil, nil
}

func attachProgram(ps *ebpf.ProgramSpec, prog *ebpf.Program, symbol string) (link.Link, error) {
	kind, _, _ := strings.Cut(ps.SectionName, "/")
	switch kind {
	case "fentry", "fexit", "tp_btf":
		return link.AttachTracing(link.TracingOptions{Program: prog, AttachType: ps.AttachType})
	case "kprobe":
		return link.Kprobe(symbol, prog, nil)
	case "kretprobe":
		return link.Kretprobe(symbol, prog, nil)
	}
	return nil, fmt.Errorf("no attach rule for section %q", ps.SectionName)
}

// deleteHookSymbol returns the compiler-split clone of nf_ct_delete that
// kallsyms lists (nf_ct_delete.part.0 on Debian 11's 5.10), or "" when the
// function is whole: its callers in nf_conntrack_core.c inline the
// IPS_DYING test and call the clone directly, so a kprobe on nf_ct_delete
// would miss every eviction and expiry (bpf/core_fixes.bpf.h, delete_clone).
func deleteHookSymbol() string {
	f, err := os.Open("/proc/kallsyms")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "ADDRESS TYPE NAME\t[MODULE]"
		fields := strings.Fields(sc.Text())
		if len(fields) >= 3 && strings.HasPrefix(fields[2], "nf_ct_delete.part.") {
			return fields[2]
		}
	}
	return ""
}

// ErrConntrackGone says that nf_conntrack was unloaded under the probes. A
// kprobe on a function of an unloaded module is gone for good (the kernel
// does not re-arm it when the module comes back) and tp_btf/kfree_skb has
// nothing left to see, so the run cannot go on; fentry pins the module
// (the kernel refuses to unload it while a trampoline calls into it).
var ErrConntrackGone = errors.New("nf_conntrack was unloaded while cttrace ran, and the hooks went with it")

// RefreshMax copies nf_conntrack_max into the programs, for the max field of
// the events: the kernel keeps the limit in a variable BPF cannot name, so
// user space tells the programs. Called at attach and then periodically by
// the session.
func (p *Probe) RefreshMax() error {
	max, err := host.ConntrackMax()
	if errors.Is(err, host.ErrNoConntrack) {
		return ErrConntrackGone
	}
	if err != nil {
		return fmt.Errorf("read table max: %w", err)
	}
	if err := p.objs.CtMax.Set(uint32(max)); err != nil {
		return fmt.Errorf("set table max: %w", err)
	}
	return nil
}

// Lost sums what the kernel side could not deliver: events counted when the
// ring buffer was full, and runs of cttrace's programs the kernel skipped.
// The kernel runs a program at most once per CPU at a time, and skips (and
// counts, since 5.12: bpf_prog_info.recursion_misses) a run that would nest:
// an fentry program runs with migration off but preemption on, so on a
// preemptible kernel (CONFIG_PREEMPT, Debian's 7.x PREEMPT_LAZY) a task
// preempted inside one makes the next task on that CPU skip it. Each skipped
// run may have been an event, or the step that classifies one.
func (p *Probe) Lost() (uint64, error) {
	var perCPU []uint64
	if err := p.objs.Lost.Lookup(uint32(0), &perCPU); err != nil {
		return 0, fmt.Errorf("read lost counter: %w", err)
	}
	lost := sum(perCPU)
	for name, prog := range p.coll.Programs {
		stats, err := prog.Stats()
		if err != nil {
			return 0, fmt.Errorf("read %s's skipped runs: %w", name, err)
		}
		lost += stats.RecursionMisses
	}
	return lost, nil
}

// Produced returns how many events of each reason the programs produced,
// streamed or not.
func (p *Probe) Produced() (event.Counts, error) {
	var counts event.Counts
	for t := range counts {
		var perCPU []uint64
		if err := p.objs.Produced.Lookup(uint32(t), &perCPU); err != nil {
			return counts, fmt.Errorf("read event counters: %w", err)
		}
		counts[t] = sum(perCPU)
	}
	return counts, nil
}

func sum(xs []uint64) uint64 {
	var n uint64
	for _, x := range xs {
		n += x
	}
	return n
}

// Programs lists the attached programs by name, for status and tests.
func (p *Probe) Programs() []string {
	var names []string
	for name := range p.coll.Programs {
		names = append(names, name)
	}
	return names
}

// Detach removes the programs from their hooks, keeping the maps: what the
// ring buffer holds can still be read, and nothing more is added to it.
func (p *Probe) Detach() error {
	p.hooks.mu.Lock()
	defer p.hooks.mu.Unlock()
	err := closeAll(slices.Concat(p.links, p.hooks.perFlow, p.hooks.healthy))
	p.links, p.hooks.perFlow, p.hooks.healthy = nil, nil, nil
	p.hooks.detached = true
	return err
}

// Close detaches every link before closing the programs and maps.
func (p *Probe) Close() error {
	err := p.Detach()
	p.coll.Close()
	p.objs.cttraceMaps.Close()
	return err
}

// ObjectNames lists the names of every program and map in the object, for
// checks that nothing is left loaded.
func ObjectNames() (programs, maps []string, err error) {
	spec, err := loadCttrace()
	if err != nil {
		return nil, nil, fmt.Errorf("read bpf object: %w", err)
	}
	for name := range spec.Programs {
		programs = append(programs, name)
	}
	for name := range spec.Maps {
		maps = append(maps, name)
	}
	return programs, maps, nil
}
