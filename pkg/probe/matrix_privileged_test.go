//go:build privileged

package probe

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"testing"

	"github.com/cttrace/cttrace/internal/testbed"
)

// kernelMatrix is what the test bed measured on each kernel it boots: the
// feature trials must come out exactly so, or the test fails.
type kernelExpectation struct {
	name            string
	release         *regexp.Regexp
	usable          []string
	conntrackModule bool
	backend         Backend
}

var kernelMatrix = []kernelExpectation{
	{
		// Debian 11's 5.10: nf_conntrack is a module without BTF (split BTF
		// for modules came with 5.11), so fentry cannot target it; kprobes
		// attach by symbol and relocate against vmlinux BTF, which carries
		// struct nf_conn; kfree_skb has no drop reasons yet (5.17); BPF
		// netfilter links came with 6.4.
		name:            "debian-5.10",
		release:         regexp.MustCompile(`^5\.10\.0-\d+-amd64$`),
		usable:          []string{FeatKernelBTF, FeatFentry, FeatFexit, FeatKprobe, FeatKretprobe, FeatTpBTF, FeatRawTracepoint},
		conntrackModule: false,
		backend:         BackendKprobe,
	},
	{
		// Debian bookworm's 6.1: nf_conntrack is a module; BPF netfilter
		// links arrived in 6.4.
		name:            "debian-6.1",
		release:         regexp.MustCompile(`^6\.1\.0-\d+-amd64$`),
		usable:          []string{FeatKernelBTF, FeatConntrackBTF, FeatFentry, FeatFexit, FeatKprobe, FeatKretprobe, FeatTpBTF, FeatDropReason, FeatTaskStorage, FeatNetnsCookie, FeatRawTracepoint},
		conntrackModule: true,
		backend:         BackendFentry,
	},
	{
		// Debian 12's 6.12, the same on amd64 and arm64 (the VM tier's arm64
		// guest).
		name:            "debian-6.12",
		release:         regexp.MustCompile(`^6\.12\.\d+\+deb12-(amd64|arm64)$`),
		usable:          []string{FeatKernelBTF, FeatConntrackBTF, FeatFentry, FeatFexit, FeatKprobe, FeatKretprobe, FeatTpBTF, FeatDropReason, FeatTaskStorage, FeatNetnsCookie, FeatRawTracepoint, FeatNetfilterLink},
		conntrackModule: true,
		backend:         BackendFentry,
	},
	{
		// Our development and CI machines: kprobes compiled out, trampolines
		// refused, nf_conntrack built in.
		name:    "ci-6.18",
		release: regexp.MustCompile(`^6\.18\.\d+-fc-v\d+$`),
		usable:  []string{FeatKernelBTF, FeatConntrackBTF, FeatTpBTF, FeatDropReason, FeatTaskStorage, FeatNetnsCookie, FeatRawTracepoint, FeatNetfilterLink},
		backend: BackendTracepoint,
	},
}

func TestFeatureMatrix(t *testing.T) {
	testbed.RequireRoot(t)
	f, err := DetectFeatures()
	if err != nil {
		t.Fatalf("detect features: %v", err)
	}
	for _, x := range f.List {
		t.Logf("feature %-15s usable=%-5v target=%s %s", x.Name, x.Usable, x.Detail, x.Error)
	}
	got, why, err := f.ChooseBackend(BackendAuto)
	t.Logf("backend auto: %s (%s) %v", got, why, err)

	i := slices.IndexFunc(kernelMatrix, func(m kernelExpectation) bool {
		return m.release.MatchString(f.Kernel)
	})
	var want kernelExpectation
	if path := testbed.VMKernelConfig(); path != "" {
		// In the VM tier the expectation follows from the kernel's build
		// configuration, so the newest kernel needs no hand-kept row; where
		// a row exists, the two must agree.
		derived, err := expectFromConfig(path, f.Kernel)
		if err != nil {
			t.Fatal(err)
		}
		if i >= 0 && !sameExpectation(derived, kernelMatrix[i]) {
			t.Errorf("%s's configuration says %+v, the recorded row %+v", f.Kernel, derived, kernelMatrix[i])
		}
		want = derived
	} else if i >= 0 {
		want = kernelMatrix[i]
	} else {
		testbed.SkipOutsideTestbed(t, "no recorded feature matrix for kernel "+f.Kernel)
	}
	t.Logf("matrix %s: kernel %s", want.name, f.Kernel)
	for _, x := range f.List {
		if expect := slices.Contains(want.usable, x.Name); x.Usable != expect {
			t.Errorf("%s on %s: usable=%v, want %v (%s)", x.Name, want.name, x.Usable, expect, x.Error)
		}
	}
	if f.ConntrackModule != want.conntrackModule {
		t.Errorf("conntrack as a module: %v, want %v", f.ConntrackModule, want.conntrackModule)
	}
	if got != want.backend {
		t.Errorf("auto backend %s, want %s", got, want.backend)
	}
}

// Every backend the trials call usable must load its real programs (CO-RE
// relocated against vmlinux or nf_conntrack's split BTF) and attach; closing
// must leave none of them in the kernel.
func TestAttachEveryUsableBackend(t *testing.T) {
	testbed.RequireRoot(t)
	f, err := DetectFeatures()
	if err != nil {
		t.Fatal(err)
	}
	attached := 0
	for _, b := range Backends {
		if ok, why := f.BackendUsable(b); !ok {
			t.Logf("%s: not usable here: %s", b, why)
			continue
		}
		t.Run(string(b), func(t *testing.T) {
			p, err := Attach(f, b, Options{StreamMask: ^uint32(0)})
			if err != nil {
				t.Fatalf("attach: %v", err)
			}
			t.Logf("attached %v", p.Programs())
			if err := p.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
			progs, maps, err := ObjectNames()
			if err != nil {
				t.Fatal(err)
			}
			testbed.AssertUnloaded(t, testbed.Names{Programs: progs, Maps: maps})
		})
		attached++
	}
	if attached == 0 {
		t.Fatal("no backend could attach")
	}
}

// expectFromConfig derives what the feature trials must find on a kernel
// from its build configuration (config-VERSION of its package) and release:
//   - kernel-btf: CONFIG_DEBUG_INFO_BTF;
//   - conntrack-btf: nf_conntrack built in with vmlinux BTF, or a module
//     with CONFIG_DEBUG_INFO_BTF_MODULES (split BTF, 5.11+);
//   - fentry/fexit: BPF trampolines (CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS)
//     and BTF; the trial's target is in vmlinux when nf_conntrack has none;
//   - kprobe/kretprobe: CONFIG_KPROBES and the perf PMU (CONFIG_KPROBE_EVENTS),
//     on nf_conntrack's allocation, which the test bed has loaded;
//   - tp_btf: BTF and CONFIG_BPF_EVENTS; raw_tracepoint: CONFIG_BPF_EVENTS;
//   - drop-reason: 5.17 or later (a kernel API, not a configuration choice);
//   - task-storage: 5.12 or later (commit a10787e6d58c) with BTF and
//     CONFIG_BPF_EVENTS;
//   - netfilter-link: CONFIG_NETFILTER_BPF_LINK;
//
// and the backend is the first of fentry, kprobe, tracepoint whose needs
// (Backend.needs) those meet, except fentry on a preemptible build.
func expectFromConfig(path, release string) (kernelExpectation, error) {
	file, err := os.Open(path)
	if err != nil {
		return kernelExpectation{}, fmt.Errorf("kernel configuration: %w", err)
	}
	defer file.Close()
	cfg := ParseKernelConfig(file)
	on := func(k string) bool { return cfg[k] == "y" }
	var major, minor int
	fmt.Sscanf(release, "%d.%d", &major, &minor)
	btf := on("DEBUG_INFO_BTF")
	module := cfg["NF_CONNTRACK"] == "m"
	has := map[string]bool{
		FeatKernelBTF:     btf,
		FeatConntrackBTF:  btf && (on("NF_CONNTRACK") || module && on("DEBUG_INFO_BTF_MODULES")),
		FeatFentry:        btf && on("DYNAMIC_FTRACE_WITH_DIRECT_CALLS"),
		FeatFexit:         btf && on("DYNAMIC_FTRACE_WITH_DIRECT_CALLS"),
		FeatKprobe:        on("KPROBES") && on("KPROBE_EVENTS") && cfg["NF_CONNTRACK"] != "",
		FeatKretprobe:     on("KPROBES") && on("KPROBE_EVENTS") && cfg["NF_CONNTRACK"] != "",
		FeatTpBTF:         btf && on("BPF_EVENTS"),
		FeatDropReason:    btf && (major > 5 || major == 5 && minor >= 17),
		FeatTaskStorage:   btf && on("BPF_EVENTS") && (major > 5 || major == 5 && minor >= 12),
		FeatNetnsCookie:   major > 5 || major == 5 && minor >= 14,
		FeatRawTracepoint: on("BPF_EVENTS"),
		FeatNetfilterLink: on("NETFILTER_BPF_LINK"),
	}
	want := kernelExpectation{name: "config of " + release, conntrackModule: module && has[FeatConntrackBTF]}
	for _, n := range featureOrder {
		if has[n] {
			want.usable = append(want.usable, n)
		}
	}
	usable := func(b Backend) bool { return !slices.ContainsFunc(b.needs(), func(n string) bool { return !has[n] }) }
	for _, b := range Backends {
		// The test bed boots without preempt=, so the built model is the
		// running one (preempt.go: fentry is skipped where it is preempted).
		if b == BackendFentry && preemptibleModels[configPreemption(cfg)] && usable(BackendKprobe) {
			continue
		}
		if usable(b) {
			want.backend = b
			break
		}
	}
	return want, nil
}

func sameExpectation(a, b kernelExpectation) bool {
	x, y := slices.Clone(a.usable), slices.Clone(b.usable)
	slices.Sort(x)
	slices.Sort(y)
	return slices.Equal(x, y) && a.conntrackModule == b.conntrackModule && a.backend == b.backend
}
