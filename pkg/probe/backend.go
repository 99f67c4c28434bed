package probe

import (
	"fmt"
	"strings"

	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/host"
)

// Backend is the kind of BPF program the hooks are attached with.
type Backend string

const (
	BackendAuto       Backend = "auto"
	BackendFentry     Backend = "fentry"
	BackendKprobe     Backend = "kprobe"
	BackendTracepoint Backend = "tracepoint"
)

// Backends in order of preference: fentry costs least per hit and reads
// arguments directly; kprobes serve kernels without BTF trampolines; the
// tracepoint only sees the freed skb and must infer the reason.
var Backends = []Backend{BackendFentry, BackendKprobe, BackendTracepoint}

// ParseBackend validates a --backend value.
func ParseBackend(s string) (Backend, error) {
	b := Backend(strings.ToLower(strings.TrimSpace(s)))
	if b == BackendAuto {
		return b, nil
	}
	for _, x := range Backends {
		if b == x {
			return b, nil
		}
	}
	return "", fmt.Errorf("unknown backend %q (want auto, fentry, kprobe or tracepoint)", s)
}

// needs lists the features a backend cannot run without.
func (b Backend) needs() []string {
	switch b {
	case BackendFentry:
		return []string{FeatConntrackBTF, FeatFentry, FeatFexit}
	case BackendKprobe:
		// No conntrack BTF needed: the trial attaches to nf_conntrack's
		// allocation by symbol, and the programs relocate against the
		// conntrack types vmlinux BTF carries (5.10's modules have no BTF).
		return []string{FeatKernelBTF, FeatKprobe, FeatKretprobe}
	case BackendTracepoint:
		return []string{FeatKernelBTF, FeatTpBTF, FeatDropReason}
	}
	return nil
}

// Usable says whether the kernel allows backend b, and if not, why.
func (f *Features) BackendUsable(b Backend) (bool, string) {
	var why []string
	for _, n := range b.needs() {
		x, ok := f.Get(n)
		if !ok {
			why = append(why, n+": not probed")
		} else if !x.Usable {
			why = append(why, fmt.Sprintf("%s: %s", n, x.Error))
		}
	}
	if len(b.needs()) == 0 {
		return false, "unknown backend"
	}
	return len(why) == 0, strings.Join(why, "; ")
}

// ChooseBackend resolves --backend: auto takes the first usable backend in
// order of preference; a forced backend must be usable. The returned reason
// is meant for the operator (printed on stderr at start).
func (f *Features) ChooseBackend(want Backend) (Backend, string, error) {
	if want != BackendAuto {
		ok, why := f.BackendUsable(want)
		if !ok {
			return "", "", fmt.Errorf("backend %s is not usable on kernel %s: %s", want, f.Kernel, why)
		}
		return want, "forced", nil
	}
	var skipped []string
	for _, b := range Backends {
		ok, why := f.BackendUsable(b)
		if ok && b == BackendFentry && f.Preemptible() {
			if kp, _ := f.BackendUsable(BackendKprobe); kp {
				skipped = append(skipped, fmt.Sprintf("fentry usable but not exact on a kernel with %s preemption (%s): "+
					"a task preempted inside an fentry program makes the kernel skip that program on its CPU; kprobes run with preemption off",
					f.Preemption, f.PreemptionSource))
				continue
			}
		}
		if ok {
			if len(skipped) == 0 {
				return b, "preferred backend, usable", nil
			}
			return b, strings.Join(skipped, "; "), nil
		}
		skipped = append(skipped, fmt.Sprintf("%s unusable (%s)", b, why))
	}
	return "", "", fmt.Errorf("no backend is usable on kernel %s: %s", f.Kernel, strings.Join(skipped, "; "))
}

// Sees lists the reasons a backend can report. The tracepoint backend only
// sees freed packets: refusals at allocation (table_full, its cause
// inferred) and at confirmation (insert_failed).
func (b Backend) Sees() []event.Reason {
	if b == BackendTracepoint {
		return []event.Reason{event.ReasonTableFull, event.ReasonInsertFailed}
	}
	return event.Reasons()
}

// Report is what the kernel allows cttrace to do, and the backend an
// automatic choice would use, with why (`cttrace features`).
type Report struct {
	*Features
	Backend       string `json:"backend"`
	BackendReason string `json:"backend_reason"`
}

// Report chooses the backend as a tracing command would: none when there
// is no conntrack to trace, whatever the kernel allows.
func (f *Features) Report() Report {
	r := Report{Features: f}
	if err := host.RequireConntrack(); err != nil {
		r.Backend, r.BackendReason = "none", err.Error()
		return r
	}
	b, why, err := f.ChooseBackend(BackendAuto)
	if err != nil {
		r.Backend, r.BackendReason = "none", err.Error()
	} else {
		r.Backend, r.BackendReason = string(b), why
	}
	return r
}
