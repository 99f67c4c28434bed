//go:build privileged

package probe

import (
	"errors"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/cttrace/cttrace/internal/testbed"
	"github.com/cttrace/cttrace/pkg/event"
)

// The kernel side's definitions, held to user space's by running them: the
// programs of bpf/selftest.bpf.c wrap the headers' functions, and
// BPF_PROG_TEST_RUN runs them on this kernel (the host tier's, and every
// guest's in the VM tier). They are in an object of their own, whose Go
// files bpf2go writes as _test.go (gen.go): cttrace never carries them.

// loadSelftestProgram loads one test program, on its own (the programs use
// no map).
func loadSelftestProgram(t *testing.T, pick func(*selftestProgramSpecs) *ebpf.ProgramSpec) *ebpf.Program {
	t.Helper()
	testbed.RequireRoot(t)
	if err := raiseMemlock(); err != nil {
		t.Fatal(err)
	}
	spec, err := loadSelftest()
	if err != nil {
		t.Fatal(err)
	}
	var specs selftestSpecs
	if err := spec.Assign(&specs); err != nil {
		t.Fatal(err)
	}
	prog, err := ebpf.NewProgram(pick(&specs.selftestProgramSpecs))
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			t.Fatalf("load: %+v", ve)
		}
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(func() { prog.Close() })
	return prog
}

// A drop is one thing everywhere: the kernel side's is_drop (which events
// set a source's last drop) says of every event type what
// event.Reason.IsDrop says of its reason, including the values that are no
// type (0 and CT_EV_MAX).
func TestKernelIsDropIsReasonIsDrop(t *testing.T) {
	prog := loadSelftestProgram(t, func(s *selftestProgramSpecs) *ebpf.ProgramSpec { return s.TestIsDrop })
	drops := 0
	for typ := uint32(0); typ <= uint32(cttraceCtEventTypeCT_EV_MAX); typ++ {
		ret, err := prog.Run(&ebpf.RunOptions{Context: []uint64{uint64(typ)}})
		if err != nil {
			t.Fatalf("run is_drop(%d): %v", typ, err)
		}
		r := event.ReasonFromKernel(typ)
		if got, want := ret != 0, r.IsDrop(); got != want {
			t.Errorf("event type %d (%q): is_drop says %v, event.Reason.IsDrop %v", typ, r, got, want)
		}
		if ret != 0 {
			drops++
		}
	}
	t.Logf("is_drop holds for %d of the %d event types", drops, cttraceCtEventTypeCT_EV_MAX-1)
}
