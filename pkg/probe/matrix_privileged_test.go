//go:build privileged

package probe

import (
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
		// Debian bookworm's 6.1: nf_conntrack is a module; BPF netfilter
		// links arrived in 6.4.
		name:            "debian-6.1",
		release:         regexp.MustCompile(`^6\.1\.0-\d+-amd64$`),
		usable:          []string{FeatKernelBTF, FeatConntrackBTF, FeatFentry, FeatFexit, FeatKprobe, FeatKretprobe, FeatTpBTF, FeatRawTracepoint},
		conntrackModule: true,
		backend:         BackendFentry,
	},
	{
		name:            "debian-6.12",
		release:         regexp.MustCompile(`^6\.12\.\d+\+deb12-amd64$`),
		usable:          []string{FeatKernelBTF, FeatConntrackBTF, FeatFentry, FeatFexit, FeatKprobe, FeatKretprobe, FeatTpBTF, FeatRawTracepoint, FeatNetfilterLink},
		conntrackModule: true,
		backend:         BackendFentry,
	},
	{
		// Our development and CI machines: kprobes compiled out, trampolines
		// refused, nf_conntrack built in.
		name:    "ci-6.18",
		release: regexp.MustCompile(`^6\.18\.\d+-fc-v\d+$`),
		usable:  []string{FeatKernelBTF, FeatConntrackBTF, FeatTpBTF, FeatRawTracepoint, FeatNetfilterLink},
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
	if i < 0 {
		testbed.SkipOutsideTestbed(t, "no recorded feature matrix for kernel "+f.Kernel)
	}
	want := kernelMatrix[i]
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
