package testbed

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Names are the names of a tool's BPF programs and maps, as its object
// file has them.
type Names struct {
	Programs, Maps []string
}

// Loaded is what of a tool is in the kernel right now: its programs, its
// maps, and the links that attach its programs.
type Loaded struct {
	Programs, Maps, Links []string
}

// Empty says whether nothing is loaded.
func (l Loaded) Empty() bool { return len(l.Programs)+len(l.Maps)+len(l.Links) == 0 }

func (l Loaded) String() string {
	return fmt.Sprintf("programs %v, maps %v, links %v", l.Programs, l.Maps, l.Links)
}

// nameSet holds names as the kernel keeps them: 15 characters; cilium/ebpf
// restores the full name from BTF when the kernel has it, so both count.
func nameSet(names []string) map[string]bool {
	set := map[string]bool{}
	for _, n := range names {
		set[n] = true
		set[n[:min(len(n), 15)]] = true
	}
	return set
}

// LoadedNow walks every BPF program, map and link in the kernel and returns
// those of names (a link by the name of its program). Global-data maps
// (.rodata, .bss) are left out: every object with globals has maps of those
// names, so they say nothing about whose they are, and in a process that
// loaded the object they live on until the garbage collector unmaps them
// (cilium/ebpf's Memory cleanup).
func LoadedNow(names Names) Loaded {
	progs, maps := nameSet(names.Programs), nameSet(names.Maps)
	for n := range maps {
		if strings.HasPrefix(n, ".") {
			delete(maps, n)
		}
	}
	var l Loaded
	ids := map[ebpf.ProgramID]string{}
	eachID(ebpf.ProgramGetNextID, func(id ebpf.ProgramID) {
		if p, err := ebpf.NewProgramFromID(id); err == nil {
			info, err := p.Info()
			p.Close()
			if err == nil && progs[info.Name] {
				l.Programs = append(l.Programs, info.Name)
				ids[id] = info.Name
			}
		}
	})
	eachID(ebpf.MapGetNextID, func(id ebpf.MapID) {
		if m, err := ebpf.NewMapFromID(id); err == nil {
			info, err := m.Info()
			m.Close()
			if err == nil && maps[info.Name] {
				l.Maps = append(l.Maps, info.Name)
			}
		}
	})
	it := new(link.Iterator)
	for it.Next() {
		if info, err := it.Link.Info(); err == nil && ids[info.Program] != "" {
			l.Links = append(l.Links, fmt.Sprintf("%s (link type %d)", ids[info.Program], info.Type))
		}
	}
	it.Close()
	return l
}

// eachID calls fn with every ID the kernel hands out after 0 (objects
// freed meanwhile are skipped by fn's own lookup).
func eachID[ID ~uint32](next func(ID) (ID, error), fn func(ID)) {
	var id ID
	for {
		n, err := next(id)
		if err != nil {
			return // the end (ErrNotExist), or nothing more to learn
		}
		id = n
		fn(id)
	}
}

// AssertUnloaded fails the test unless nothing of names is loaded within
// ten seconds: the kernel frees programs and maps after an RCU grace
// period, not at the moment the last file descriptor closes.
func AssertUnloaded(t testing.TB, names Names) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		left := LoadedNow(names)
		if left.Empty() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still loaded: %s", left)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
