package testbed

import (
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// LoadedPrograms returns which of names belong to programs loaded in the
// kernel right now. The kernel keeps 15 characters of a name; cilium/ebpf
// restores the full one from BTF when the kernel has it, so both count.
func LoadedPrograms(names []string) []string {
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
		want[n[:min(len(n), 15)]] = true
	}
	var left []string
	var id ebpf.ProgramID
	for {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			return left
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue // unloaded meanwhile
		}
		info, err := p.Info()
		p.Close()
		if err == nil && want[info.Name] {
			left = append(left, info.Name)
		}
	}
}

// AssertUnloaded fails the test unless none of names is loaded within ten
// seconds: the kernel frees a program after an RCU grace period, not at the
// moment its last file descriptor closes.
func AssertUnloaded(t testing.TB, names []string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		left := LoadedPrograms(names)
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("programs still loaded: %v", left)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
