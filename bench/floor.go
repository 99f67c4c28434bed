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
	insns := asm.Instructions{
		// r2 = ctx[2]: enum skb_drop_reason reason (kfree_skb's args are
		// skb, location, reason, rx_sk).
		asm.LoadMem(asm.R2, asm.R1, 16, asm.DWord),
		asm.JNE.Imm(asm.R2, int32(reason), "out"),
		// r0 = &counter[0] on this CPU.
		asm.StoreImm(asm.RFP, -4, 0, asm.Word),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.LoadMapPtr(asm.R1, f.counter.FD()),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		// (*r0)++: per-CPU, so no atomic is needed.
		asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
		asm.Add.Imm(asm.R1, 1),
		asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
		asm.Return(),
	}
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
	var per []uint64
	if err := f.counter.Lookup(uint32(0), &per); err != nil {
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
