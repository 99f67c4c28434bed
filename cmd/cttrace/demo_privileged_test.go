//go:build privileged

package main

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cttrace/cttrace/internal/ctlab"
	"github.com/cttrace/cttrace/internal/testbed"
)

// demoLeftovers fails the test if anything of a demo is left: its
// namespace, its processes, a changed nf_conntrack_max, cttrace's BPF
// objects.
func demoLeftovers(t *testing.T, max int) {
	t.Helper()
	if m, _ := filepath.Glob("/run/netns/cttrace-demo-*"); len(m) > 0 {
		t.Errorf("namespaces left: %v", m)
	}
	if got, err := ctlab.ReadGlobal(ctlab.MaxPath); err != nil || got != max {
		t.Errorf("nf_conntrack_max %d (%v), want it restored to %d", got, err, max)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		if strings.Contains(string(b), "/run/netns/cttrace-demo-") {
			t.Errorf("process left: %s: %q", p, strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	assertNothingLoaded(t)
}

// startDemo starts `cttrace demo` with the global max locked for the test,
// and returns it with the max it must restore.
func startDemo(t *testing.T, args ...string) (*process, int) {
	t.Helper()
	testbed.RequireRoot(t)
	max, err := ctlab.ReadGlobal(ctlab.MaxPath)
	if err != nil {
		t.Fatal(err)
	}
	ctlab.SetMax(t, max) // no change: holds the lock other tests take
	cmd := cttrace(append([]string{"demo"}, args...)...)
	// Its own process group, as at a terminal: Ctrl-C there reaches the
	// demo and its cttrace commands alike.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	r := launch(t, cmd, nil)
	t.Cleanup(func() { syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL) })
	return r, max
}

// The README's first command: a real attack, watched, in under 30 s, and
// nothing left behind.
func TestDemo(t *testing.T) {
	start := time.Now()
	r, max := startDemo(t, "--attack", "3s")
	code := r.wait(t, 2*time.Minute)
	took := time.Since(start)
	out := r.stdout.String()
	t.Logf("took %s; output:\n%s", took.Round(time.Millisecond), out)
	if code != 0 || r.stderr.String() != "" {
		t.Fatalf("exit status %d, stderr:\n%s", code, r.stderr)
	}
	for _, want := range []string{"table_full", "127.66.0.1/32", "--- what happened ---", "drop counter rose by"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if testbed.Tier() != testbed.VM && took > 30*time.Second {
		t.Errorf("the demo took %s, more than the 30 s it promises", took)
	}
	demoLeftovers(t, max)
}

// Ctrl-C and SIGTERM in the middle of the attack, and the demo's cttrace
// commands killed under it: it ends, and cleans up, every time.
func TestDemoStopsCleanly(t *testing.T) {
	if testbed.Tier() == testbed.VM {
		t.Skip("TestDemo covers the demo in the VM tier; its interruptions are the host's (each costs a full set-up under emulation)")
	}
	for _, tc := range []struct {
		name string
		stop func(r *process)
		code int
	}{
		{"ctrl-c", func(r *process) { syscall.Kill(-r.cmd.Process.Pid, syscall.SIGINT) }, 0},
		{"sigterm", func(r *process) { r.cmd.Process.Signal(syscall.SIGTERM) }, 0},
		{"commands killed", func(r *process) {
			// Children are listed under the thread that forked them.
			tasks, _ := filepath.Glob("/proc/" + strconv.Itoa(r.cmd.Process.Pid) + "/task/*/children")
			for _, f := range tasks {
				b, _ := os.ReadFile(f)
				for _, pid := range strings.Fields(string(b)) {
					n, _ := strconv.Atoi(pid)
					syscall.Kill(n, syscall.SIGKILL)
				}
			}
		}, exitRuntime},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, max := startDemo(t, "--attack", "20s")
			r.waitOutput(t, "the attack", func(lines []string) bool {
				return slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(l, "--- cttrace drops") })
			})
			tc.stop(r)
			if code := r.wait(t, time.Minute); code != tc.code {
				t.Errorf("exit status %d, want %d; stderr:\n%s", code, tc.code, r.stderr)
			}
			demoLeftovers(t, max)
		})
	}
}

// On a host whose busiest namespace would need a big demo table, the demo
// refuses, says why, and changes nothing.
func TestDemoRefusesABusyHost(t *testing.T) {
	if testbed.Tier() == testbed.VM {
		t.Skip("33,000 flows under emulation take minutes; the refusal is decided the same way on every kernel (demo.PlanFor)")
	}
	ctlab.SetMax(t, 40000)
	lab := ctlab.New(t)
	if res, err := lab.Flood(ctlab.FloodSpec{Random: true, Packets: 33000, Seed: 9}); err != nil || res.Refused != 0 {
		t.Fatalf("flood: %+v, %v", res, err)
	}
	cmd := cttrace("demo")
	out, _ := cmd.CombinedOutput()
	first, _, _ := strings.Cut(string(out), "\n")
	if cmd.ProcessState.ExitCode() != exitRuntime || !strings.HasPrefix(first, "cttrace: the host is too busy for the demo: netns "+lab.Name()) ||
		!strings.Contains(first, "holds 33000 entries") {
		t.Errorf("exit status %d, output:\n%s", cmd.ProcessState.ExitCode(), out)
	}
	demoLeftovers(t, 40000)
}
