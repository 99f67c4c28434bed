package probe

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	ebpffeatures "github.com/cilium/ebpf/features"
)

// configure decides everything that is fixed at load: the kernel side's
// configuration (struct ct_config in bpf/config.bpf.h, which bpf2go
// generates as cttraceCtConfig), built whole from opts and the kernel's
// features and set with one call, and the sizes and kinds of the maps it
// implies. The configuration is read-only to the programs and frozen at
// load, so the verifier knows each field and skips the code it rules out;
// what user space changes while the programs run (ct_max, the admission
// shifts) are separate variables. clone says that the delete hook is a
// compiler-split clone of nf_ct_delete (deleteHookSymbol).
func configure(specs *specObjects, f *Features, opts Options, clone bool) error {
	cfg := cttraceCtConfig{StreamMask: opts.StreamMask}
	if opts.RingBytes != 0 {
		specs.Events.MaxEntries = opts.RingBytes
	}
	// Woken at an eighth full, the reader has seven eighths left to catch up
	// before anything is lost; below that it reads on its 100 ms timer.
	cfg.WakeupBytes = specs.Events.MaxEntries / 8
	if err := opts.Sources.apply(&cfg, specs); err != nil {
		return err
	}
	if err := opts.Stream.apply(&cfg, specs); err != nil {
		return err
	}
	if err := configureSketches(&cfg, specs, opts); err != nil {
		return err
	}
	keepAllocStatePerTask(&cfg, specs, f)
	if x, ok := f.Get(FeatNetnsCookie); ok && x.Usable {
		cfg.NetnsCookie = 1
	}
	if clone {
		cfg.DeleteHookIsClone = 1
	}
	// Tracing programs get bpf_jiffies64() from bpf_tracing_func_proto,
	// as raw tracepoints do: a trial with the latter, which every kernel
	// with a backend loads.
	if ebpffeatures.HaveProgramHelper(ebpf.RawTracepoint, asm.FnJiffies64) == nil {
		cfg.TickClock = 1
	}
	if err := specs.Cfg.Set(cfg); err != nil {
		return fmt.Errorf("set the programs' configuration: %w", err)
	}
	return nil
}

func (o SourceOptions) apply(cfg *cttraceCtConfig, specs *specObjects) error {
	if !o.Enabled {
		return nil
	}
	cfg.CountNamespaces = 1
	if o.NamespacesOnly {
		specs.Sources.MaxEntries = 1 // never written: no memory for it
		return nil
	}
	v4, v6 := o.V4Bits, o.V6Bits
	if v4 > 32 || v6 > 128 {
		return fmt.Errorf("invalid source grouping /%d, /%d", v4, v6)
	}
	cfg.CountSources, cfg.GroupV4Bits, cfg.GroupV6Bits = 1, uint32(v4), uint32(v6)
	if o.Max != 0 {
		specs.Sources.MaxEntries = o.Max
	}
	return nil
}

func (o StreamOptions) apply(cfg *cttraceCtConfig, specs *specObjects) error {
	if o.Limit == 0 {
		specs.Aggregated.MaxEntries = 1 // never written: no memory for it
	}
	cfg.StreamPerCpuPerS = o.perCPU()
	if len(o.Netns) > int(specs.StreamNetns.MaxEntries) {
		return fmt.Errorf("at most %d namespaces can be selected, not %d", specs.StreamNetns.MaxEntries, len(o.Netns))
	}
	if len(o.Netns) > 0 {
		cfg.NetnsFilter = 1
	}
	return nil
}

// configureSketches sizes the refusals' heavy-hitter sketches
// (bpf/sketch.bpf.h) to one per CPU for each map that counts refusals per
// source (the sources map, the aggregated map past --stream-limit), seeds
// their hash at random, and grants each map its room (grantRoom). Without
// either map the array is one unused entry.
func configureSketches(cfg *cttraceCtConfig, specs *specObjects, opts Options) error {
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return fmt.Errorf("count the possible CPUs for the sketches: %w", err)
	}
	var uses uint32
	if opts.Sources.Enabled && !opts.Sources.NamespacesOnly {
		uses++
		cfg.SketchAggregatedBase = uint32(cpus)
	}
	if opts.Stream.Limit != 0 {
		uses++
	}
	specs.Sketches.MaxEntries = max(uses*uint32(cpus), 1)
	var seed [8]byte
	if _, err := rand.Read(seed[:]); err != nil {
		return fmt.Errorf("seed the sketches: %w", err)
	}
	cfg.SketchSeed = binary.LittleEndian.Uint64(seed[:])
	for room, m := range map[*ebpf.VariableSpec]*ebpf.MapSpec{specs.SourcesRoom: specs.Sources, specs.AggregatedRoom: specs.Aggregated} {
		if err := room.Set(roomOf(m.MaxEntries)); err != nil {
			return fmt.Errorf("grant the %s map its room: %w", m.Name, err)
		}
	}
	return nil
}

// keepAllocStatePerTask keeps the allocation hooks' state with the task
// where it must and can be: on a kernel that preempts kernel code, an
// allocation can be preempted between its entry and its exit and finish on
// another CPU (alloc_scratch in bpf/cttrace.bpf.c says why), and tracing
// programs may keep state per task since 5.12 (FeatTaskStorage). A kernel
// that does not preempt kernel code (voluntary or none, Debian's 5.10 to
// 6.12) finishes the allocation on the CPU it began on, so the per-CPU slot
// is exact there and spares every new flow a task-storage lookup; a kernel
// whose model could not be read is taken as preemptible. Where the state
// is kept per CPU, the task storage map, which older kernels cannot even
// create, becomes a one-slot array that the programs never reach:
// alloc_state_per_task stays 0, and the verifier skips the branch that
// would use it.
func keepAllocStatePerTask(cfg *cttraceCtConfig, specs *specObjects, f *Features) {
	if allocStatePerTask(f) {
		cfg.AllocStatePerTask = 1
		return
	}
	m := specs.AllocTaskState
	m.Type, m.Flags, m.MaxEntries = ebpf.Array, 0, 1
}

// allocStatePerTask says whether the allocation's state is kept per task
// (keepAllocStatePerTask).
func allocStatePerTask(f *Features) bool {
	x, ok := f.Get(FeatTaskStorage)
	if !ok || !x.Usable {
		return false
	}
	return f.Preemption == "" || f.Preemptible()
}
