// Package bench measures what tracing conntrack drops costs the host under a
// flood: cttrace's commands side by side with bpftrace scripts and a
// count-only program of the project's own (the floor of the mechanism). The
// harness is TestFloodBench (build tag privileged), run by `make bench`; see
// bench/README.md.
package bench

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
)

// Floor is a count-only tp_btf/kfree_skb program: it reads the drop reason
// (the tracepoint's third argument), compares it with the netfilter drop
// reason and adds 1 to a per-CPU counter. Nothing else: no map keyed by
// flow, no ring buffer, no helper but the map lookup. What any tracer on
// this hook costs at least.
type Floor struct {
	Reason  uint32 // SKB_DROP_REASON_NETFILTER_DROP on this kernel
	counter *ebpf.Map
	prog    *ebpf.Program
	link    link.Link
}

// NetfilterDropReason resolves SKB_DROP_REASON_NETFILTER_DROP from the
// kernel's BTF (enum skb_drop_reason).
func NetfilterDropReason() (uint32, error) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return 0, fmt.Errorf("kernel BTF: %w", err)
	}
	var e *btf.Enum
	if err := spec.TypeByName("skb_drop_reason", &e); err != nil {
		return 0, fmt.Errorf("enum skb_drop_reason: %w", err)
	}
	for _, v := range e.Values {
		if v.Name == "SKB_DROP_REASON_NETFILTER_DROP" {
			return uint32(v.Value), nil
		}
	}
	return 0, errors.New("enum skb_drop_reason has no SKB_DROP_REASON_NETFILTER_DROP")
}

// TracefsNetfilterDropReason reads NETFILTER_DROP's value from the
// skb:kfree_skb tracepoint's format (what bpftrace scripts compare with).
// tracefs must be mounted (see MountTracefs).
func TracefsNetfilterDropReason() (uint32, error) {
	const path = "/sys/kernel/tracing/events/skb/kfree_skb/format"
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	// ... __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, ..., { 12, "NETFILTER_DROP" }, ...
	s := string(b)
	i := strings.Index(s, `, "NETFILTER_DROP" }`)
	if i < 0 {
		return 0, fmt.Errorf("%s: no NETFILTER_DROP", path)
	}
	j := strings.LastIndex(s[:i], "{")
	if j < 0 {
		return 0, fmt.Errorf("%s: unexpected format", path)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(s[j+1:i]), 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%s: NETFILTER_DROP: %w", path, err)
	}
	return uint32(n), nil
}

// AttachFloor loads and attaches the floor program.
func AttachFloor() (*Floor, error) {
	reason, err := NetfilterDropReason()
	if err != nil {
		return nil, err
	}
	f := &Floor{Reason: reason}
	f.counter, err = ebpf.NewMap(&ebpf.MapSpec{
		Name: "floor_drops", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("floor counter map: %w", err)
	}
	insns := append(asm.Instructions{
		// r2 = ctx[2]: enum skb_drop_reason reason (kfree_skb's args are
		// skb, location, reason, rx_sk).
		asm.LoadMem(asm.R2, asm.R1, 16, asm.DWord),
		asm.JNE.Imm(asm.R2, int32(reason), "out"),
	}, countAndReturn(f.counter)...)
	f.prog, err = ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "floor_kfree_skb",
		Type:         ebpf.Tracing,
		AttachType:   ebpf.AttachTraceRawTp,
		AttachTo:     "kfree_skb",
		License:      "GPL",
		Instructions: insns,
	})
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("load floor program: %w", err)
	}
	f.link, err = link.AttachTracing(link.TracingOptions{Program: f.prog, AttachType: ebpf.AttachTraceRawTp})
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("attach floor program to tp_btf/kfree_skb: %w", err)
	}
	return f, nil
}

// Count is the number of netfilter drops counted so far (all CPUs).
func (f *Floor) Count() (uint64, error) {
	return sumPerCPU(f.counter)
}

// sumPerCPU adds the CPUs' values of a one-entry per-CPU counter.
func sumPerCPU(m *ebpf.Map) (uint64, error) {
	var per []uint64
	if err := m.Lookup(uint32(0), &per); err != nil {
		return 0, err
	}
	var n uint64
	for _, v := range per {
		n += v
	}
	return n, nil
}

// ProgramID is the kernel's ID of the floor program.
func (f *Floor) ProgramID() (uint32, error) {
	info, err := f.prog.Info()
	if err != nil {
		return 0, err
	}
	id, _ := info.ID()
	return uint32(id), nil
}

// Close detaches and unloads.
func (f *Floor) Close() {
	if f.link != nil {
		f.link.Close()
	}
	if f.prog != nil {
		f.prog.Close()
	}
	if f.counter != nil {
		f.counter.Close()
	}
}

// HookFloor is the floor of the fentry and kprobe backends: programs on the
// entry and exit of __nf_conntrack_alloc and __nf_conntrack_confirm, where
// cttrace hooks every new flow, that do nothing but count the allocations
// that failed (ERR_PTR returns: the table full, or no memory). What any
// tracer that follows every new flow on these hooks costs at least: in the
// steady state it shows the mechanism's own price (four trampolines or four
// kprobes per flow), apart from what cttrace's programs do in them.
type HookFloor struct {
	Backend string // fentry or kprobe
	counter *ebpf.Map
	progs   []*ebpf.Program
	links   []link.Link
}

// perFlowFunctions are the functions cttrace hooks on entry and exit for
// every new flow.
var perFlowFunctions = []string{"__nf_conntrack_alloc", "__nf_conntrack_confirm"}

// AttachHookFloor loads and attaches the per-flow floor for backend
// (fentry or kprobe).
func AttachHookFloor(backend string) (*HookFloor, error) {
	if backend != "fentry" && backend != "kprobe" {
		return nil, fmt.Errorf("hook floor: backend %q (want fentry or kprobe)", backend)
	}
	f := &HookFloor{Backend: backend}
	var err error
	f.counter, err = ebpf.NewMap(&ebpf.MapSpec{
		Name: "floor_failed", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("hook floor counter map: %w", err)
	}
	for _, fn := range perFlowFunctions {
		for _, exit := range []bool{false, true} {
			if err := f.attach(fn, exit && fn == "__nf_conntrack_alloc", exit); err != nil {
				f.Close()
				return nil, err
			}
		}
	}
	return f, nil
}

// attach loads one program on fn's entry or exit; counting ones read the
// return value and count error pointers.
func (f *HookFloor) attach(fn string, counting, exit bool) error {
	insns := asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}
	if counting {
		insns = f.countErrors(f.returnValue())
	}
	spec := &ebpf.ProgramSpec{Name: "floor_flow", License: "GPL", Instructions: insns}
	if f.Backend == "fentry" {
		spec.Type, spec.AttachTo, spec.AttachType = ebpf.Tracing, fn, ebpf.AttachTraceFEntry
		if exit {
			spec.AttachType = ebpf.AttachTraceFExit
		}
	} else {
		spec.Type = ebpf.Kprobe
	}
	p, err := ebpf.NewProgram(spec)
	if err != nil {
		return fmt.Errorf("load hook floor program for %s: %w", fn, err)
	}
	f.progs = append(f.progs, p)
	var l link.Link
	switch {
	case f.Backend == "fentry":
		l, err = link.AttachTracing(link.TracingOptions{Program: p})
	case exit:
		l, err = link.Kretprobe(fn, p, nil)
	default:
		l, err = link.Kprobe(fn, p, nil)
	}
	if err != nil {
		return fmt.Errorf("attach hook floor program to %s: %w", fn, err)
	}
	f.links = append(f.links, l)
	return nil
}

// returnValue loads the hooked function's return value into R2: fexit's
// context is its arguments then the return value (__nf_conntrack_alloc has
// six arguments); a kretprobe's is pt_regs.
func (f *HookFloor) returnValue() asm.Instruction {
	if f.Backend == "fentry" {
		return asm.LoadMem(asm.R2, asm.R1, 6*8, asm.DWord)
	}
	off := int16(10 * 8) // x86-64: pt_regs.ax follows r15 … r8
	if runtime.GOARCH == "arm64" {
		off = 0 // regs[0]
	}
	return asm.LoadMem(asm.R2, asm.R1, off, asm.DWord)
}

// countErrors counts, on this CPU, a return value in R2 that is an error
// pointer (IS_ERR_VALUE: the last 4095 addresses).
func (f *HookFloor) countErrors(load asm.Instruction) asm.Instructions {
	return append(asm.Instructions{
		load,
		asm.JLT.Imm(asm.R2, -4095, "out"),
	}, countAndReturn(f.counter)...)
}

// countAndReturn adds 1 to counter[0] on this CPU and returns 0; the
// instructions before it jump to "out" to return without counting.
func countAndReturn(counter *ebpf.Map) asm.Instructions {
	return asm.Instructions{
		// r0 = &counter[0] on this CPU.
		asm.StoreImm(asm.RFP, -4, 0, asm.Word),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.LoadMapPtr(asm.R1, counter.FD()),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		// (*r0)++: per-CPU, so no atomic is needed.
		asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
		asm.Add.Imm(asm.R1, 1),
		asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
		asm.Return(),
	}
}

// Count is the number of failed allocations counted so far (all CPUs).
func (f *HookFloor) Count() (uint64, error) {
	return sumPerCPU(f.counter)
}

// Close detaches and unloads.
func (f *HookFloor) Close() {
	for _, l := range f.links {
		l.Close()
	}
	for _, p := range f.progs {
		p.Close()
	}
	if f.counter != nil {
		f.counter.Close()
	}
}
