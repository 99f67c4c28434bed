package probe

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
)

// Probe is one backend's programs, loaded and attached.
type Probe struct {
	Backend Backend
	coll    *ebpf.Collection
	links   []link.Link
}

// sectionBackend maps a program's ELF section prefix to its backend: each
// backend's wrappers live in sections of their own kind.
func sectionBackend(section string) Backend {
	switch kind, _, _ := strings.Cut(section, "/"); kind {
	case "fentry", "fexit":
		return BackendFentry
	case "kprobe", "kretprobe":
		return BackendKprobe
	case "tp_btf":
		return BackendTracepoint
	}
	return ""
}

// Attach loads the programs of backend b (never auto) and attaches them. The
// other backends' programs are deleted from the spec before load, so a kernel
// that refuses them never sees them.
func Attach(f *Features, b Backend) (*Probe, error) {
	spec, err := loadCttrace()
	if err != nil {
		return nil, fmt.Errorf("read bpf object: %w", err)
	}
	for name, p := range spec.Programs {
		if sectionBackend(p.SectionName) != b {
			delete(spec.Programs, name)
		}
	}
	if len(spec.Programs) == 0 {
		return nil, fmt.Errorf("no programs for backend %q", b)
	}
	opts := ebpf.CollectionOptions{}
	if f != nil && f.ConntrackModule {
		// nf_conntrack's types live in its split BTF, not in vmlinux.
		mod, err := btf.LoadKernelModuleSpec("nf_conntrack")
		if err != nil {
			return nil, fmt.Errorf("load nf_conntrack btf: %w", err)
		}
		opts.Programs.ExtraRelocationTargets = []*btf.Spec{mod}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, opts)
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load %s programs: %+v", b, ve)
		}
		return nil, fmt.Errorf("load %s programs: %w", b, err)
	}
	p := &Probe{Backend: b, coll: coll}
	for name, ps := range spec.Programs {
		l, err := attachProgram(ps, coll.Programs[name])
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("attach %s (%s): %w", name, ps.SectionName, err)
		}
		p.links = append(p.links, l)
	}
	return p, nil
}

func attachProgram(ps *ebpf.ProgramSpec, prog *ebpf.Program) (link.Link, error) {
	kind, _, _ := strings.Cut(ps.SectionName, "/")
	switch kind {
	case "fentry", "fexit", "tp_btf":
		return link.AttachTracing(link.TracingOptions{Program: prog, AttachType: ps.AttachType})
	case "kprobe":
		return link.Kprobe(ps.AttachTo, prog, nil)
	case "kretprobe":
		return link.Kretprobe(ps.AttachTo, prog, nil)
	}
	return nil, fmt.Errorf("no attach rule for section %q", ps.SectionName)
}

// Events is the ring buffer the programs write to.
func (p *Probe) Events() *ebpf.Map { return p.coll.Maps["events"] }

// Lost sums, over CPUs, the events the kernel side could not deliver.
func (p *Probe) Lost() (uint64, error) {
	var perCPU []uint64
	if err := p.coll.Maps["lost"].Lookup(uint32(0), &perCPU); err != nil {
		return 0, fmt.Errorf("read lost counter: %w", err)
	}
	var n uint64
	for _, v := range perCPU {
		n += v
	}
	return n, nil
}

// Programs lists the attached programs by name, for status and tests.
func (p *Probe) Programs() []string {
	var names []string
	for name := range p.coll.Programs {
		names = append(names, name)
	}
	return names
}

// Close detaches every link before closing the programs and maps.
func (p *Probe) Close() error {
	var errs []error
	for _, l := range p.links {
		errs = append(errs, l.Close())
	}
	p.links = nil
	p.coll.Close()
	return errors.Join(errs...)
}
