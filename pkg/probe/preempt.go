package probe

import (
	"bufio"
	"compress/gzip"
	"io"
	"os"
	"strings"
)

// Why the preemption model decides between fentry and kprobe: the kernel
// runs a BPF program at most once per CPU at a time and skips a run that
// would nest (bpf_prog_info.recursion_misses). BTF tracing programs
// (fentry, fexit, tp_btf) run with migration disabled but preemption
// enabled (__bpf_prog_enter_recur), so on a kernel that preempts kernel
// code (full, lazy or RT preemption) a task preempted inside one stays on
// its CPU, and every other task that hits the same hook there meanwhile is
// skipped. Measured on Debian's 7.2 (PREEMPT_LAZY) under emulation, four
// concurrent senders of 100 refusals each: fentry missed 5, 10 and 59 in
// three runs (one sender's flows mostly), tp_btf 0 and 1; kprobe programs,
// which run with preemption disabled, none. cttrace counts skipped runs as
// lost (Probe.Lost) and prefers kprobe there; the tracepoint backend stays
// the last resort.

// preemptibleModels are the models in which kernel code is preempted.
var preemptibleModels = map[string]bool{"full": true, "lazy": true, "rt": true}

// Preemptible says whether the kernel preempts kernel code, as far as
// cttrace could tell (Preemption is empty when it could not).
func (f *Features) Preemptible() bool { return preemptibleModels[f.Preemption] }

const schedPreemptFile = "/sys/kernel/debug/sched/preempt"

// detectPreemption returns the preemption model the kernel runs with
// ("none", "voluntary", "full", "lazy" or "rt") and where it was read.
// debugfs has the running mode of a PREEMPT_DYNAMIC kernel (6.1+: the
// current one in parentheses); without debugfs the build configuration has
// the chosen model, which the preempt= boot parameter overrides on a
// dynamic kernel.
func detectPreemption(release string) (model, source string) {
	if b, err := os.ReadFile(schedPreemptFile); err == nil {
		if m := currentPreemptMode(string(b)); m != "" {
			return m, schedPreemptFile
		}
	}
	cfg, path := readKernelConfig(release)
	if cfg == nil {
		return "", ""
	}
	model = configPreemption(cfg)
	if cfg["PREEMPT_DYNAMIC"] == "y" {
		if b, err := os.ReadFile("/proc/cmdline"); err == nil {
			if m := bootPreemptMode(string(b)); m != "" {
				return m, "/proc/cmdline"
			}
		}
	}
	return model, path
}

// currentPreemptMode reads debugfs's "none voluntary (full) lazy".
func currentPreemptMode(s string) string {
	for _, w := range strings.Fields(s) {
		if strings.HasPrefix(w, "(") && strings.HasSuffix(w, ")") {
			return strings.Trim(w, "()")
		}
	}
	return ""
}

// bootPreemptMode reads preempt=MODE from the kernel's command line.
func bootPreemptMode(cmdline string) string {
	for _, w := range strings.Fields(cmdline) {
		if m, ok := strings.CutPrefix(w, "preempt="); ok {
			return m
		}
	}
	return ""
}

// configPreemption is the model a kernel was built with (the Kconfig
// choice "Preemption Model"; PREEMPT_RT also sets PREEMPT).
func configPreemption(cfg map[string]string) string {
	for _, m := range []struct{ option, model string }{
		{"PREEMPT_RT", "rt"}, {"PREEMPT_LAZY", "lazy"}, {"PREEMPT", "full"},
		{"PREEMPT_VOLUNTARY", "voluntary"}, {"PREEMPT_NONE", "none"},
	} {
		if cfg[m.option] == "y" {
			return m.model
		}
	}
	return ""
}

// readKernelConfig reads the running kernel's build configuration from
// /boot/config-RELEASE (distributions) or /proc/config.gz (IKCONFIG).
func readKernelConfig(release string) (map[string]string, string) {
	path := "/boot/config-" + release
	if f, err := os.Open(path); err == nil {
		defer f.Close()
		return ParseKernelConfig(f), path
	}
	path = "/proc/config.gz"
	f, err := os.Open(path)
	if err != nil {
		return nil, ""
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		return nil, ""
	}
	return ParseKernelConfig(z), path
}

// ParseKernelConfig reads CONFIG_NAME=value lines into NAME → value.
func ParseKernelConfig(r io.Reader) map[string]string {
	cfg := map[string]string{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok && strings.HasPrefix(k, "CONFIG_") {
			cfg[strings.TrimPrefix(k, "CONFIG_")] = v
		}
	}
	return cfg
}
