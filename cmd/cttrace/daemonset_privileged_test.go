//go:build privileged

package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/cttrace/cttrace/deploy"
	"github.com/cttrace/cttrace/internal/ctlab"
	"github.com/cttrace/cttrace/internal/testbed"
)

// The DaemonSet's privileges and resources, measured rather than guessed.
// cttrace serve runs as root holding only the capabilities
// deploy/daemonset.yaml adds (what a container that drops ALL has). With
// them it counts the kernel's drops and reads the tables of a named
// namespace (a test lab, as ip-netns or a CNI plugin makes) and of an
// unnamed one held by another user's process (a pod running as non-root);
// without any one of them, one of those tables is missing; and its peak
// memory under 100,000 spoofed sources fits the manifest's limit.
func TestDaemonSetPrivileges(t *testing.T) {
	ds, err := deploy.DaemonSet()
	if err != nil {
		t.Fatal(err)
	}
	c := ds.Spec.Template.Spec.Containers[0]
	var granted []string
	for _, capability := range c.SecurityContext.Capabilities.Add {
		granted = append(granted, string(capability))
	}
	lab := fullTable(t, 32)
	pod := podNamespace(t)
	labNetns := strconv.FormatUint(uint64(lab.Inode()), 10)

	t.Run("granted", func(t *testing.T) {
		before := kernelDrops(t, lab)
		r, addr := startServeWith(t, granted, true)
		refuse(t, lab, "127.83.0.1", 50)
		want := kernelDrops(t, lab) - before
		waitScrape(t, addr, "both tables and the lab's drops", func(f map[string]*dto.MetricFamily) bool {
			entries := labelled(f["cttrace_nf_conntrack_entries"], nil, "netns")
			events := labelled(f["cttrace_events_total"], map[string]string{"netns": labNetns}, "reason")
			return entries[labNetns] == 32 && entries[pod] == 1 && events["table_full"] == want
		})
		res, err := lab.Flood(ctlab.FloodSpec{Random: true, Packets: 100_000, Seed: 9})
		if err != nil || res.Refused != 100_000 {
			t.Fatalf("flood: %+v, %v", res, err)
		}
		want = kernelDrops(t, lab) - before
		waitScrape(t, addr, "the flood's drops", func(f map[string]*dto.MetricFamily) bool {
			return labelled(f["cttrace_events_total"], map[string]string{"netns": labNetns}, "reason")["table_full"] == want
		})
		peak := peakResidentBytes(t, r.cmd.Process.Pid)
		limit := c.Resources.Limits.Memory().Value()
		request := c.Resources.Requests.Memory().Value()
		t.Logf("capabilities %v: peak RSS %.1f MiB after %v drops from 100,000 spoofed sources; manifest: request %d MiB, limit %d MiB",
			granted, float64(peak)/(1<<20), want, request>>20, limit>>20)
		// Headroom: the kernel's allocations and a busier host than this
		// test's one namespace must not get serve OOM-killed mid-attack.
		if uint64(limit) < peak*3/2 {
			t.Errorf("memory limit %d MiB is under 1.5 × the measured peak %.1f MiB", limit>>20, float64(peak)/(1<<20))
		}
		if uint64(request) > peak*2 {
			t.Errorf("memory request %d MiB is over twice the measured peak %.1f MiB: it reserves what serve does not use", request>>20, float64(peak)/(1<<20))
		}
		if code := r.stop(t, syscall.SIGTERM); code != 0 {
			t.Errorf("exit status %d after SIGTERM\n%s", code, r.stderr)
		}
	})

	for _, drop := range granted {
		t.Run("without "+drop, func(t *testing.T) {
			left := slices.DeleteFunc(slices.Clone(granted), func(c string) bool { return c == drop })
			addr := freeAddr(t)
			ready := filepath.Join(t.TempDir(), "ready")
			r := launch(t, cttraceWithOnly(nil, left, "serve", "--listen", addr, "--interval", "200ms", "--ready-file", ready), nil)
			if !readyOrExited(t, r, ready) {
				if code := r.wait(t, time.Minute); code != 1 {
					t.Errorf("exit status %d, want 1 (cannot attach)\n%s", code, r.stderr)
				}
				t.Logf("refused to start: %s", r.stderr)
				return
			}
			// Two readings, so the one judged started after attaching.
			var first float64
			_, f := waitScrape(t, addr, "two readings", func(f map[string]*dto.MetricFamily) bool {
				ts := labelled(f["cttrace_last_reading_timestamp_seconds"], nil, "")[""]
				if first == 0 {
					first = ts
				}
				return ts > first
			})
			entries := labelled(f["cttrace_nf_conntrack_entries"], nil, "netns")
			_, labSeen := entries[labNetns]
			_, podSeen := entries[pod]
			failed := labelled(f["cttrace_read_errors_total"], nil, "what")["tables"]
			t.Logf("lab table shown %v, pod table shown %v, table read errors %v", labSeen, podSeen, failed)
			if labSeen && podSeen && drop == "SYS_RESOURCE" && testbed.KernelAtLeast(5, 11) {
				t.Logf("SYS_RESOURCE is needed only before 5.11, to raise RLIMIT_MEMLOCK")
			} else if labSeen && podSeen {
				t.Errorf("both tables read without %s: the manifest grants a capability serve does not need", drop)
			}
		})
	}

	// SYS_ADMIN (for setns) also grants what loading the probes needs
	// (bpf_capable() and perfmon_capable() accept it), which is why the
	// manifest does not list BPF and PERFMON. Without SYS_ADMIN they are
	// what the probes need.
	t.Run("probes without SYS_ADMIN", func(t *testing.T) {
		cmd := cttraceWithOnly(nil, []string{"NET_ADMIN", "SYS_PTRACE", "SYS_RESOURCE"}, "serve", "--listen", freeAddr(t))
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(string(out), "CAP_BPF") {
			t.Errorf("without SYS_ADMIN, BPF and PERFMON: %v, want exit 1 naming CAP_BPF:\n%s", err, out)
		}
		probes := []string{"BPF", "PERFMON", "NET_ADMIN", "SYS_PTRACE", "SYS_RESOURCE"}
		if !testbed.KernelAtLeast(5, 11) {
			// Measured on 5.10, where the kprobe backend is the only one: its
			// perf kprobe PMU refuses CAP_PERFMON alone (EACCES), as 6.1
			// does not. The manifest's SYS_ADMIN covers it.
			out, err := cttraceWithOnly(nil, probes, "serve", "--listen", freeAddr(t)).CombinedOutput()
			if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(string(out), "permission denied") {
				t.Errorf("before 5.11 without SYS_ADMIN: %v, want exit 1, the kprobe PMU refusing:\n%s", err, out)
			}
			return
		}
		before := kernelDrops(t, lab)
		_, addr := startServeWith(t, probes, false)
		refuse(t, lab, "127.83.0.2", 20)
		want := kernelDrops(t, lab) - before
		waitScrape(t, addr, "the lab's drops", func(f map[string]*dto.MetricFamily) bool {
			return labelled(f["cttrace_events_total"], map[string]string{"netns": labNetns}, "reason")["table_full"] == want
		})
	})
}

// kernelDrops is the lab namespace's drop counter, as the kernel keeps it.
func kernelDrops(t *testing.T, lab *ctlab.Lab) float64 {
	t.Helper()
	s, err := lab.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return float64(s.Drop)
}

// startServeWith starts cttrace serve holding only caps, measured (built
// without -race) if asked, and returns it with its address.
func startServeWith(t *testing.T, caps []string, measured bool) (*process, string) {
	t.Helper()
	exe := ""
	if measured {
		exe = plainBinary(t)
	}
	addr := freeAddr(t)
	command := func(args ...string) *exec.Cmd {
		return cttraceWithOnly([]string{"CTTRACE_TEST_EXEC=" + exe}, caps, args...)
	}
	return startBinary(t, command, nil, "serve", "--listen", addr, "--interval", "200ms"), addr
}

// readyOrExited waits until r has attached (true) or exited (false).
func readyOrExited(t *testing.T, r *process, ready string) bool {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(ready); err == nil {
			return true
		}
		select {
		case <-r.exited:
			return false
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("cttrace neither attached nor exited within a minute\n%s", r.stderr)
	return false
}

// cttraceWithOnly is cttrace run as root holding only caps (TestMain's
// execWithOnly drops the rest before it starts).
func cttraceWithOnly(env, caps []string, args ...string) *exec.Cmd {
	cmd := cttrace(args...)
	cmd.Env = append(append(cmd.Env, env...), "CTTRACE_TEST_CAPS="+strings.Join(caps, ","))
	return cmd
}

// podNamespace makes what a pod running as non-root is to cttrace: a
// network namespace with no name under /run/netns, held only by a process
// of another user, with one conntrack entry. It returns the namespace's
// inode as a metric label.
func podNamespace(t *testing.T) string {
	t.Helper()
	nsenter := testbed.Tool(t, "nsenter", "util-linux")
	conntrack := testbed.Tool(t, "conntrack", "conntrack")
	holder := exec.Command("sleep", "3600")
	holder.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNET,
		Credential: &syscall.Credential{Uid: 65534, Gid: 65534},
	}
	if err := holder.Start(); err != nil {
		t.Fatalf("start a process as nobody in a network namespace of its own: %v", err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	ns := fmt.Sprintf("/proc/%d/ns/net", holder.Process.Pid)
	out, err := exec.Command(nsenter, "--net="+ns, conntrack, "-I", "-p", "udp", "-s", "10.83.0.1", "-d", "10.83.0.2",
		"--sport", "1000", "--dport", "53", "--timeout", "3600").CombinedOutput()
	if err != nil {
		t.Fatalf("add a conntrack entry in the pod's namespace: %v\n%s", err, out)
	}
	ino, err := netnsInode(ns)
	if err != nil {
		t.Fatal(err)
	}
	return strconv.FormatUint(ino, 10)
}

func netnsInode(path string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return st.Ino, nil
}
