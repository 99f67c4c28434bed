// Package testbed tells a test which tier of the test bed runs it, so that a
// test expected to work on a given kernel fails instead of skipping there.
package testbed

import (
	"fmt"
	"os"
	"os/exec"
	"testing"

	"github.com/cttrace/cttrace/pkg/host"
)

// Tier names, set by the Makefile (host) and by test/vm/run.sh (vm) in
// CTTRACE_TESTBED. Outside the test bed the variable is empty.
const (
	Host = "host"
	VM   = "vm"
)

// Tier returns the test bed tier running this test, or "".
func Tier() string { return os.Getenv("CTTRACE_TESTBED") }

// VMKernel is the label of the kernel the VM tier booted (6.1, 6.12).
func VMKernel() string { return os.Getenv("CTTRACE_VM_KERNEL") }

// VMKernelConfig is the path of the booted kernel's build configuration
// (its package's config-VERSION) in the VM tier, "" elsewhere.
func VMKernelConfig() string { return os.Getenv("CTTRACE_VM_KCONFIG") }

// ModprobeArgs are modprobe's arguments to load module: in the VM tier the
// guest kernel's modules are under CTTRACE_VM_MODULES_ROOT (the host's
// root, shared read-only, may have no modules directory to show them in).
func ModprobeArgs(module string) []string {
	if root := os.Getenv("CTTRACE_VM_MODULES_ROOT"); root != "" {
		return []string{"-d", root, module}
	}
	return []string{module}
}

// RequireRoot fails the test when not root: privileged tests are only built
// with -tags privileged, so running them unprivileged is a set-up mistake,
// not a reason to skip.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("privileged test run without root: run it through `make test-host` or as root")
	}
}

// SkipOutsideTestbed skips with the reason when no expectation covers this
// kernel and the test bed did not start the test; inside the test bed the
// missing expectation is a failure.
func SkipOutsideTestbed(t testing.TB, why string) {
	t.Helper()
	if Tier() != "" {
		t.Fatalf("%s (test bed tier %q must have an expectation)", why, Tier())
	}
	t.Skip(why)
}

// Tool returns the path of the program name, which Debian's package pkg
// ships. `make test` installs every package the tests use (make deps) and
// says so in CTTRACE_TOOLS=installed: there a missing tool fails the test.
// Elsewhere (a bare `go test`, the VM tier's minimal guest) the check that
// needs it is skipped with the reason.
func Tool(t testing.TB, name, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	switch {
	case err == nil:
		return path
	case os.Getenv("CTTRACE_TOOLS") == "installed":
		t.Fatalf("no %s, though make deps ran: install Debian's %s", name, pkg)
	default:
		t.Skipf("no %s here (Debian package %s; `make test` installs it)", name, pkg)
	}
	return ""
}

// KernelAtLeast says whether the running kernel's release is major.minor or
// later: for the few expectations that follow a kernel version (what the
// kernel charges BPF memory to, which attachments are BPF links).
func KernelAtLeast(major, minor int) bool {
	var ma, mi int
	if _, err := fmt.Sscanf(host.Release(), "%d.%d", &ma, &mi); err != nil {
		return true
	}
	return ma > major || ma == major && mi >= minor
}
