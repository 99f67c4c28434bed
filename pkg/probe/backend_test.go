package probe

import (
	"reflect"
	"strings"
	"testing"
)

// features builds a Features value in which exactly the named trials passed.
func features(usable ...string) *Features {
	f := &Features{Kernel: "test"}
	ok := map[string]bool{}
	for _, u := range usable {
		ok[u] = true
	}
	for _, n := range featureOrder {
		x := Feature{Name: n, Usable: ok[n]}
		if !x.Usable {
			x.Error = "refused in test"
		}
		f.List = append(f.List, x)
	}
	return f
}

func TestChooseBackendPrefersFentryThenKprobeThenTracepoint(t *testing.T) {
	all := []string{FeatKernelBTF, FeatConntrackBTF, FeatFentry, FeatFexit, FeatKprobe, FeatKretprobe, FeatTpBTF, FeatDropReason}
	cases := []struct {
		name   string
		usable []string
		want   Backend
	}{
		{"everything", all, BackendFentry},
		{"no fexit", []string{FeatKernelBTF, FeatConntrackBTF, FeatFentry, FeatKprobe, FeatKretprobe, FeatTpBTF}, BackendKprobe},
		{"this machine", []string{FeatKernelBTF, FeatConntrackBTF, FeatTpBTF, FeatDropReason, FeatRawTracepoint, FeatNetfilterLink}, BackendTracepoint},
		// fentry/fexit pass on nf_hook_slow, kprobes cannot find __nf_conntrack_alloc.
		{"conntrack not loaded", []string{FeatKernelBTF, FeatFentry, FeatFexit, FeatTpBTF, FeatDropReason}, BackendTracepoint},
		// Debian 11's 5.10: modules have no BTF, so no fentry on nf_conntrack;
		// kprobes attach by symbol and relocate against vmlinux BTF; kfree_skb
		// has no drop reasons yet.
		{"5.10, modules without BTF", []string{FeatKernelBTF, FeatFentry, FeatFexit, FeatKprobe, FeatKretprobe, FeatTpBTF}, BackendKprobe},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, why, err := features(tc.usable...).ChooseBackend(BackendAuto)
			if err != nil {
				t.Fatalf("ChooseBackend: %v", err)
			}
			if got != tc.want {
				t.Fatalf("got %s (%s), want %s", got, why, tc.want)
			}
			if why == "" {
				t.Fatal("no reason given for the choice")
			}
		})
	}
}

// On a kernel that preempts kernel code, an fentry program a task is
// preempted in is skipped for every other task on that CPU (preempt.go):
// auto takes kprobe there, and says why; fentry stays when nothing else
// would do, and when it is forced.
func TestChooseBackendAvoidsFentryWhenPreempted(t *testing.T) {
	all := []string{FeatKernelBTF, FeatConntrackBTF, FeatFentry, FeatFexit, FeatKprobe, FeatKretprobe, FeatTpBTF, FeatDropReason}
	for _, tc := range []struct {
		model  string
		usable []string
		want   Backend
	}{
		{"lazy", all, BackendKprobe},
		{"full", all, BackendKprobe},
		{"rt", all, BackendKprobe},
		{"voluntary", all, BackendFentry},
		{"none", all, BackendFentry},
		{"", all, BackendFentry},
		{"lazy", []string{FeatKernelBTF, FeatConntrackBTF, FeatFentry, FeatFexit, FeatTpBTF, FeatDropReason}, BackendFentry},
	} {
		f := features(tc.usable...)
		f.Preemption, f.PreemptionSource = tc.model, "test"
		got, why, err := f.ChooseBackend(BackendAuto)
		if err != nil || got != tc.want {
			t.Errorf("preemption %q: got %s (%s, %v), want %s", tc.model, got, why, err, tc.want)
		}
		if got == BackendKprobe && !strings.Contains(why, tc.model+" preemption") {
			t.Errorf("preemption %q: the reason does not name it: %s", tc.model, why)
		}
	}
	f := features(all...)
	f.Preemption = "lazy"
	if got, _, err := f.ChooseBackend(BackendFentry); err != nil || got != BackendFentry {
		t.Errorf("forced fentry on a preemptible kernel: %s %v", got, err)
	}
}

func TestPreemptionModel(t *testing.T) {
	if got := currentPreemptMode("none voluntary (full) lazy\n"); got != "full" {
		t.Errorf("debugfs: got %q", got)
	}
	if got := currentPreemptMode("garbage"); got != "" {
		t.Errorf("debugfs without a current mode: got %q", got)
	}
	if got := bootPreemptMode("BOOT_IMAGE=/vmlinuz root=/dev/sda1 preempt=none quiet"); got != "none" {
		t.Errorf("cmdline: got %q", got)
	}
	for cfg, want := range map[string]string{
		// Debian's 7.2.13 and 6.12, and an RT build (which also sets PREEMPT).
		"CONFIG_PREEMPT_BUILD=y\nCONFIG_PREEMPT_LAZY=y\nCONFIG_PREEMPT_DYNAMIC=y\n":      "lazy",
		"CONFIG_PREEMPT_BUILD=y\nCONFIG_PREEMPT_VOLUNTARY=y\nCONFIG_PREEMPT_DYNAMIC=y\n": "voluntary",
		"CONFIG_PREEMPT=y\nCONFIG_PREEMPT_RT=y\n":                                        "rt",
		"CONFIG_PREEMPT=y\n": "full",
		"# CONFIG_PREEMPT is not set\nCONFIG_PREEMPT_NONE=y\n": "none",
		"CONFIG_BPF=y\n": "",
	} {
		if got := configPreemption(ParseKernelConfig(strings.NewReader(cfg))); got != want {
			t.Errorf("config %q: got %q, want %q", cfg, got, want)
		}
	}
}

func TestChooseBackendExplainsRefusal(t *testing.T) {
	f := features(FeatKernelBTF, FeatTpBTF, FeatDropReason)
	if _, _, err := f.ChooseBackend(BackendFentry); err == nil || !strings.Contains(err.Error(), "fentry: refused in test") {
		t.Fatalf("forcing an unusable backend: got %v, want the kernel's refusal", err)
	}
	if _, _, err := features().ChooseBackend(BackendAuto); err == nil || !strings.Contains(err.Error(), "no backend is usable") {
		t.Fatalf("nothing usable: got %v", err)
	}
	got, why, err := f.ChooseBackend(BackendTracepoint)
	if err != nil || got != BackendTracepoint || why != "forced" {
		t.Fatalf("forced tracepoint: %s %q %v", got, why, err)
	}
}

func TestParseBackend(t *testing.T) {
	for _, s := range []string{"auto", "fentry", "KPROBE", " tracepoint "} {
		if _, err := ParseBackend(s); err != nil {
			t.Errorf("ParseBackend(%q): %v", s, err)
		}
	}
	if _, err := ParseBackend("ebpf"); err == nil {
		t.Error("ParseBackend(ebpf) accepted an unknown backend")
	}
}

// Every program in the object must belong to exactly one backend, and every
// backend must have programs: a new hook without a wrapper for each backend,
// or a misspelt section, fails here rather than on an operator's kernel.
func TestEveryProgramBelongsToABackend(t *testing.T) {
	spec, err := loadCttrace()
	if err != nil {
		t.Fatal(err)
	}
	per := map[Backend][]string{}
	for name, p := range spec.Programs {
		b := sectionBackend(p.SectionName)
		if b == "" {
			t.Errorf("program %s in section %q belongs to no backend", name, p.SectionName)
		}
		per[b] = append(per[b], name)
	}
	for _, b := range Backends {
		if len(per[b]) == 0 {
			t.Errorf("backend %s has no programs", b)
		}
	}
	// The fentry and kprobe backends hook the same kernel functions, at
	// entry and at exit alike.
	edge := map[string]string{"fentry": "entry", "kprobe": "entry", "fexit": "exit", "kretprobe": "exit"}
	hooks := func(b Backend) map[string]bool {
		m := map[string]bool{}
		for _, p := range spec.Programs {
			if sectionBackend(p.SectionName) == b {
				kind, fn, _ := strings.Cut(p.SectionName, "/")
				m[edge[kind]+" "+fn] = true
			}
		}
		return m
	}
	fe, kp := hooks(BackendFentry), hooks(BackendKprobe)
	if !reflect.DeepEqual(fe, kp) {
		t.Errorf("fentry hooks %v and kprobe hooks %v differ", fe, kp)
	}
}

// The allocation's state is kept per task only where a kernel that may
// preempt kernel code lets tracing programs keep task storage; a kernel
// that does not preempt finishes each allocation on the CPU it began on.
func TestAllocStatePerTaskOnlyWherePreempted(t *testing.T) {
	for _, tc := range []struct {
		storage bool
		model   string
		want    bool
	}{
		{true, "full", true}, {true, "lazy", true}, {true, "rt", true},
		{true, "", true}, // unknown: taken as preemptible
		{true, "voluntary", false}, {true, "none", false},
		{false, "lazy", false}, {false, "", false},
	} {
		f := features()
		if tc.storage {
			f = features(FeatTaskStorage)
		}
		f.Preemption = tc.model
		if got := allocStatePerTask(f); got != tc.want {
			t.Errorf("task storage %v, preemption %q: per task %v, want %v", tc.storage, tc.model, got, tc.want)
		}
	}
}
