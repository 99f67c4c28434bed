//go:build privileged

package probe

import (
	"fmt"
	"slices"
	"testing"

	"github.com/cttrace/cttrace/internal/testbed"
)

// The configuration (bpf/config.bpf.h) decides at verification which code
// each program keeps, so each combination the commands use is a program of
// its own to the verifier, and one kernel's verifier may refuse what
// another's accepts (6.1's lost an index bound that 6.12's kept, only with
// per-source counting on). Every usable backend must load under each, and
// the log keeps, per program, the instructions the verifier processed and
// those it kept (after removing dead code), to compare across changes.
func TestEveryConfigurationLoads(t *testing.T) {
	testbed.RequireRoot(t)
	f, err := DetectFeatures()
	if err != nil {
		t.Fatal(err)
	}
	configs := []struct {
		name string
		opts Options
	}{
		// top-sources and serve: every event only counted.
		{"count-only", Options{Sources: SourceOptions{Enabled: true}}},
		// serve --metrics-top 0: counted per namespace only.
		{"namespaces-only", Options{Sources: SourceOptions{Enabled: true, NamespacesOnly: true}}},
		// serve's default: the per-flow hooks loaded but not attached, and
		// the freed-packet program where the kernel has drop reasons.
		{"on-pressure", Options{Sources: SourceOptions{Enabled: true}, PerFlowOnPressure: true}},
		// Everything at once (every type streamed, past a limit, for one
		// namespace, and counted per source): the most code any
		// combination keeps. TestAttachEveryUsableBackend loads the
		// default (every type streamed, nothing else).
		{"all", Options{StreamMask: ^uint32(0), Sources: SourceOptions{Enabled: true, V4Bits: 24, V6Bits: 64},
			Stream: StreamOptions{Limit: 1000, Netns: []uint32{1}}}},
	}
	loaded := 0
	for _, b := range Backends {
		if ok, why := f.BackendUsable(b); !ok {
			t.Logf("%s: not usable here: %s", b, why)
			continue
		}
		for _, c := range configs {
			t.Run(string(b)+"/"+c.name, func(t *testing.T) {
				p, err := Attach(f, b, c.opts)
				if err != nil {
					t.Fatalf("attach: %v", err)
				}
				defer p.Close()
				var lines []string
				for name, prog := range p.coll.Programs {
					info, err := prog.Info()
					if err != nil {
						t.Fatal(err)
					}
					verified, _ := info.VerifiedInstructions()
					insns, err := info.Instructions()
					if err != nil {
						t.Fatal(err)
					}
					kept := 0
					for _, ins := range insns {
						kept += int(ins.Size() / 8)
					}
					lines = append(lines, fmt.Sprintf("%-26s verified %6d, kept %5d", name, verified, kept))
				}
				slices.Sort(lines)
				for _, l := range lines {
					t.Log(l)
				}
			})
			loaded++
		}
	}
	if loaded == 0 {
		t.Fatal("no backend usable")
	}
}
