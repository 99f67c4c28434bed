package probe

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	ebpffeatures "github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/cttrace/cttrace/pkg/host"
)

// Feature names, as shown by `cttrace features` and used in the test bed's
// expected matrix.
const (
	FeatKernelBTF     = "kernel-btf"
	FeatConntrackBTF  = "conntrack-btf"
	FeatFentry        = "fentry"
	FeatFexit         = "fexit"
	FeatKprobe        = "kprobe"
	FeatKretprobe     = "kretprobe"
	FeatTpBTF         = "tp_btf"
	FeatDropReason    = "drop-reason"
	FeatTaskStorage   = "task-storage"
	FeatNetnsCookie   = "netns-cookie"
	FeatRawTracepoint = "raw_tracepoint"
	FeatNetfilterLink = "netfilter-link"
)

// featureOrder is the order in which features are probed and shown.
var featureOrder = []string{
	FeatKernelBTF, FeatConntrackBTF, FeatFentry, FeatFexit, FeatKprobe,
	FeatKretprobe, FeatTpBTF, FeatDropReason, FeatTaskStorage, FeatNetnsCookie, FeatRawTracepoint, FeatNetfilterLink,
}

// The function where conntrack decides "table full": the hook every backend
// attaches to, so it is also what each trial attaches to.
const allocFunc = "__nf_conntrack_alloc"

// A fallback target in vmlinux for the fentry and kprobe trials when
// nf_conntrack is not loaded, so that "this kernel cannot do fentry" and
// "there is no conntrack to trace" are reported apart. nf_hook_slow is
// netfilter's core, built in wherever netfilter is, and never inlined.
const coreFunc = "nf_hook_slow"

// Feature is the outcome of one trial.
type Feature struct {
	Name   string `json:"name"`
	Usable bool   `json:"usable"`
	// Detail says what was tried (the attach target) or where it was found.
	Detail string `json:"detail"`
	// Error is the kernel's answer when the trial failed, empty otherwise.
	Error string `json:"error"`
}

// Features is what the running kernel allows cttrace to do.
type Features struct {
	Kernel string    `json:"kernel"`
	List   []Feature `json:"features"`
	// ConntrackModule is true when nf_conntrack's types come from its own
	// split BTF (nf_conntrack built as a module).
	ConntrackModule bool `json:"conntrack_module"`
	// Preemption is the kernel's preemption model (none, voluntary, full,
	// lazy, rt), empty when unknown, and PreemptionSource where it was
	// read: on a preemptible kernel fentry programs are skipped while a
	// preempted run holds their CPU (preempt.go), so kprobe is preferred.
	Preemption       string `json:"preemption,omitempty"`
	PreemptionSource string `json:"preemption_source,omitempty"`
}

// Get returns the named feature's result.
func (f *Features) Get(name string) (Feature, bool) {
	if f == nil {
		return Feature{}, false
	}
	for _, x := range f.List {
		if x.Name == name {
			return x, true
		}
	}
	return Feature{}, false
}

// DetectFeatures runs every trial once per process and returns the cached
// result afterwards. Results are not cached across runs: loading a module
// (nf_conntrack) or changing lockdown changes the answer.
var DetectFeatures = sync.OnceValues(func() (*Features, error) { return detectFeatures(true) })

// DetectBackends runs only the trials that decide the backend: tracing
// starts sooner, and the netfilter-link trial, which briefly hooks the
// host's LOCAL_OUT, is left to `cttrace features`.
var DetectBackends = sync.OnceValues(func() (*Features, error) { return detectFeatures(false) })

func detectFeatures(all bool) (*Features, error) {
	if err := checkCapabilities(); err != nil {
		return nil, err
	}
	if err := raiseMemlock(); err != nil {
		return nil, err
	}
	f := &Features{Kernel: host.Release()}
	f.Preemption, f.PreemptionSource = detectPreemption(f.Kernel)

	kernelSpec, kernelErr := btf.LoadKernelSpec()
	f.add(result(FeatKernelBTF, "/sys/kernel/btf/vmlinux", kernelErr))

	ct := detectConntrackBTF(kernelSpec)
	f.ConntrackModule = ct.Usable && strings.HasPrefix(ct.Detail, "module")
	f.add(ct)

	target := allocFunc
	if !ct.Usable {
		target = coreFunc
	}
	f.add(trialTracing(FeatFentry, ebpf.AttachTraceFEntry, target))
	f.add(trialTracing(FeatFexit, ebpf.AttachTraceFExit, target))
	// kprobes find their function by symbol (kallsyms), not by BTF: they
	// reach nf_conntrack's functions where its module has no BTF (5.10),
	// and then relocate against the conntrack types vmlinux BTF carries.
	// Without nf_conntrack the trial fails, as the backend would.
	f.add(trialKprobe(FeatKprobe, false, allocFunc))
	f.add(trialKprobe(FeatKretprobe, true, allocFunc))
	f.add(trialTracing(FeatTpBTF, ebpf.AttachTraceRawTp, "kfree_skb"))
	f.add(detectDropReason(kernelSpec))
	f.add(detectTaskStorage())
	f.add(detectNetnsCookie())
	if all {
		f.add(trialRawTracepoint("kfree_skb"))
		f.add(trialNetfilterLink())
	}
	return f, nil
}

func (f *Features) add(x Feature) { f.List = append(f.List, x) }

// refusal words the kernel's answer for an operator: cilium/ebpf appends a
// RLIMIT_MEMLOCK hint to every EPERM at load, but memory is charged to the
// memory cgroup since 5.11 and checkCapabilities has already ruled out a
// privilege problem, so an EPERM here means the kernel refuses that kind of
// program (lockdown, or a hardened build that disallows trampolines).
func refusal(stage string, err error) error {
	switch {
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("%s: refused by the kernel: %w", stage, unix.EPERM)
	}
	return fmt.Errorf("%s: %w", stage, err)
}

func kprobePMU() bool {
	_, err := os.Stat("/sys/bus/event_source/devices/kprobe")
	return err == nil
}

func result(name, detail string, err error) Feature {
	if err != nil {
		return Feature{Name: name, Detail: detail, Error: err.Error()}
	}
	return Feature{Name: name, Usable: true, Detail: detail}
}

// detectConntrackBTF finds where nf_conntrack's types are described. When
// it is a module (every mainstream distribution), its split BTF holds the
// types private to it (struct nf_conntrack_net) and the functions fentry
// attaches to, while the shared ones (nf_conn, nf_conntrack_tuple) are
// deduplicated into vmlinux; CO-RE must then search both.
func detectConntrackBTF(kernel *btf.Spec) Feature {
	const name = FeatConntrackBTF
	if _, err := os.Stat("/sys/kernel/btf/nf_conntrack"); err == nil {
		if _, err := btf.LoadKernelModuleSpec("nf_conntrack"); err != nil {
			return result(name, "module nf_conntrack", fmt.Errorf("load split btf: %w", err))
		}
		return Feature{Name: name, Usable: true, Detail: "module nf_conntrack (split BTF)"}
	}
	if _, err := os.Stat("/sys/module/nf_conntrack"); err != nil {
		return Feature{Name: name, Detail: "nf_conntrack",
			Error: "nf_conntrack is not loaded: no connection tracking is in use on this host (load it with `modprobe nf_conntrack` or any stateful firewall rule)"}
	}
	if kernel != nil {
		var fn *btf.Func
		if err := kernel.TypeByName(allocFunc, &fn); err == nil {
			return Feature{Name: name, Usable: true, Detail: "built in (vmlinux)"}
		}
	}
	return Feature{Name: name, Detail: "nf_conntrack",
		Error: "nf_conntrack is loaded but its functions have no BTF (kernel built without CONFIG_DEBUG_INFO_BTF_MODULES?)"}
}

// detectDropReason says whether kfree_skb tells a netfilter drop from the
// others: the tracepoint backend's only way to see a refusal. The reason
// argument and SKB_DROP_REASON_NETFILTER_DROP arrived in 5.17 (commit
// 2df3041ba3be, "net: netfilter: use kfree_drop_reason() for NF_DROP");
// 5.10's kfree_skb carries only the caller's address.
func detectDropReason(kernel *btf.Spec) Feature {
	const name, detail = FeatDropReason, "SKB_DROP_REASON_NETFILTER_DROP"
	var reasons *btf.Enum
	if kernel == nil || kernel.TypeByName("skb_drop_reason", &reasons) != nil {
		return Feature{Name: name, Detail: detail, Error: "kfree_skb has no drop reasons on this kernel (they came with 5.17)"}
	}
	for _, v := range reasons.Values {
		if v.Name == detail {
			return Feature{Name: name, Usable: true, Detail: detail}
		}
	}
	return Feature{Name: name, Detail: detail, Error: "kfree_skb gives no netfilter drop reason on this kernel"}
}

// detectTaskStorage says whether tracing programs may keep state per task,
// which the allocation hooks need on a preemptible kernel (alloc_scratch in
// bpf/cttrace.bpf.c): task-local storage (5.11) and its use outside LSM
// programs (5.12, commit a10787e6d58c). fentry's programs get the same
// helpers as kprobes (bpf_tracing_func_proto), so the kprobe type is asked,
// which loads on every kernel with BPF events, even this one without kprobes.
func detectTaskStorage() Feature {
	const name, detail = FeatTaskStorage, "bpf_task_storage_get in tracing programs"
	err := ebpffeatures.HaveMapType(ebpf.TaskStorage)
	if err == nil {
		err = ebpffeatures.HaveProgramHelper(ebpf.Kprobe, asm.FnTaskStorageGet)
	}
	if err == nil {
		err = ebpffeatures.HaveProgramHelper(ebpf.Kprobe, asm.FnGetCurrentTaskBtf)
	}
	if errors.Is(err, ebpf.ErrNotSupported) {
		return Feature{Name: name, Detail: detail,
			Error: "tracing programs cannot keep state per task before 5.12: the allocation's state is kept per CPU, exact unless the kernel preempts conntrack (CONFIG_PREEMPT)"}
	}
	return result(name, detail, err)
}

// detectNetnsCookie says whether user space can read a namespace's netns
// cookie (SO_NETNS_COOKIE, 5.14: commit e8b9eab99232, "net: add
// SO_NETNS_COOKIE socket option"): cookies, which the kernel never reuses,
// then key namespaces in the kernel side and in user space alike, where the
// inode numbers the kernel reuses at once would merge a dead namespace's
// counts into the next one's (conn.bpf.h, net_id).
func detectNetnsCookie() Feature {
	const name, detail = FeatNetnsCookie, "SO_NETNS_COOKIE"
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return result(name, detail, fmt.Errorf("socket: %w", err))
	}
	defer unix.Close(fd)
	if _, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE); err != nil {
		return Feature{Name: name, Detail: detail,
			Error: "the kernel gives no netns cookie (5.14+): namespaces are known by inode number, which the kernel reuses as soon as one dies"}
	}
	return Feature{Name: name, Usable: true, Detail: detail}
}

// returnZero is the smallest valid program: every trial loads it, so a
// failure is about the program type or attach point, never about the code.
func returnZero(ret int32) asm.Instructions {
	return asm.Instructions{asm.Mov.Imm(asm.R0, ret), asm.Return()}
}

// trial loads spec with a program that returns ret, attaches it with
// attach and detaches it: every trial's shape, its outcome in the kernel's
// words for the operator.
func trial(name, detail string, spec ebpf.ProgramSpec, ret int32, attach func(*ebpf.Program) (link.Link, error)) Feature {
	spec.Name, spec.License, spec.Instructions = "cttrace_trial", "GPL", returnZero(ret)
	prog, err := ebpf.NewProgram(&spec)
	if err != nil {
		return result(name, detail, refusal("load", err))
	}
	defer prog.Close()
	l, err := attach(prog)
	if err != nil {
		return result(name, detail, err)
	}
	return result(name, detail, l.Close())
}

func trialTracing(name string, at ebpf.AttachType, target string) Feature {
	return trial(name, target, ebpf.ProgramSpec{Type: ebpf.Tracing, AttachType: at, AttachTo: target}, 0,
		func(p *ebpf.Program) (link.Link, error) {
			l, err := link.AttachTracing(link.TracingOptions{Program: p, AttachType: at})
			return l, attachError(err)
		})
}

func trialKprobe(name string, ret bool, target string) Feature {
	return trial(name, target, ebpf.ProgramSpec{Type: ebpf.Kprobe}, 0, func(p *ebpf.Program) (link.Link, error) {
		attach := link.Kprobe
		if ret {
			attach = link.Kretprobe
		}
		l, err := attach(target, p, nil)
		if err != nil && !kprobePMU() {
			// cilium/ebpf falls back to tracefs when the PMU is missing, and
			// its error then speaks of tracefs; the PMU's absence is the
			// real cause.
			return nil, errors.New("attach: no kprobe PMU in /sys/bus/event_source/devices and the tracefs fallback failed (kernel built without CONFIG_KPROBES?)")
		}
		return l, attachError(err)
	})
}

func trialRawTracepoint(tp string) Feature {
	return trial(FeatRawTracepoint, tp, ebpf.ProgramSpec{Type: ebpf.RawTracepoint}, 0, func(p *ebpf.Program) (link.Link, error) {
		l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: tp, Program: p})
		return l, attachError(err)
	})
}

// trialNetfilterLink attaches an accept-everything program at the lowest
// priority of this namespace's IPv4 LOCAL_OUT hook for the time of the trial;
// BPF netfilter links exist since 6.4 (commit 84601d6ee68a).
func trialNetfilterLink() Feature {
	spec := ebpf.ProgramSpec{Type: ebpf.Netfilter, AttachType: ebpf.AttachNetfilter}
	return trial(FeatNetfilterLink, "ipv4 local-out", spec, 1 /* NF_ACCEPT */, func(p *ebpf.Program) (link.Link, error) {
		l, err := link.AttachNetfilter(link.NetfilterOptions{
			Program: p, ProtocolFamily: link.NetfilterProtoIPv4,
			Hook: link.NetfilterInetLocalOut, Priority: 1<<31 - 2, // NF_IP_PRI_LAST is INT_MAX and excluded
		})
		return l, attachError(err)
	})
}

func attachError(err error) error {
	if err != nil {
		return refusal("attach", err)
	}
	return nil
}

// raiseMemlock lifts RLIMIT_MEMLOCK where the kernel charges BPF memory to
// it. Before 5.11 (memcg accounting of BPF memory: Roman Gushchin's series
// "bpf: switch to memcg-based memory accounting", merged for 5.11) every map
// and program counts against that limit, whose usual 64 KiB cannot hold even
// the per-namespace counters, and map creation fails with EPERM. On 5.11 and
// later rlimit.RemoveMemlock changes nothing.
func raiseMemlock() error {
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("raise RLIMIT_MEMLOCK, which kernels before 5.11 charge BPF maps to (root with CAP_SYS_RESOURCE can; or start cttrace under `ulimit -l unlimited`): %w", err)
	}
	return nil
}

// checkCapabilities fails early, with a message a person can act on
// (host.ErrPrivileges), when the process lacks what loading any BPF
// program needs: CAP_SYS_ADMIN, as root has, or since 5.8 CAP_BPF,
// CAP_PERFMON (tracing programs) and CAP_NET_ADMIN (netfilter's).
func checkCapabilities() error {
	if admin, err := host.Missing(host.CapSysAdmin); err != nil || len(admin) == 0 {
		return err
	}
	return host.Require("loading BPF programs", host.CapBPF, host.CapPerfmon, host.CapNetAdmin)
}
