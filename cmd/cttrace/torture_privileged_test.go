//go:build privileged

package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cttrace/cttrace/internal/ctlab"
	"github.com/cttrace/cttrace/internal/testbed"
)

// Torture: a minute of refused flows from random spoofed sources while
// top-sources runs and `drops -o json | head -n 100` ends early. Nothing
// crashes, top-sources stays within its memory bound and its totals are
// the kernel's, the piped run ends with status 0, and nothing stays loaded.
func TestTortureAMinuteOfSpoofedFlood(t *testing.T) {
	if testbed.Tier() == testbed.VM {
		t.Skip("a minute of flood is sized for the host (it needs no fentry or kprobe): under emulation it would take many minutes")
	}
	const rate, seconds = 50_000, 60
	lab := fullTable(t, 64)
	netns := "/run/netns/" + lab.Name()
	top := startTopMeasured(t, "-o", "json", "--netns", netns)

	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	drops := startDrops(t, pw, "-o", "json", "--netns", netns)
	pw.Close()
	head := exec.Command("head", "-n", "100")
	head.Stdin = pr
	headOut, err := head.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := head.Start(); err != nil {
		t.Fatal(err)
	}
	pr.Close()
	lines := make(chan int, 1)
	go func() {
		n := 0
		for sc := bufio.NewScanner(headOut); sc.Scan(); n++ {
		}
		lines <- n
	}()

	before, err := lab.Stats()
	if err != nil {
		t.Fatal(err)
	}
	res, err := lab.Flood(ctlab.FloodSpec{Random: true, Packets: rate * seconds, Rate: rate, Seed: 11})
	if err != nil || res.Refused != rate*seconds {
		t.Fatalf("flood: %+v, %v", res, err)
	}
	after, err := lab.Stats()
	if err != nil {
		t.Fatal(err)
	}
	drop := uint64(after.Sub(before).Drop)

	if n := <-lines; n != 100 {
		t.Errorf("head read %d lines, want 100", n)
	}
	head.Wait()
	if code := drops.wait(t, time.Minute); code != 0 {
		t.Errorf("drops | head: exit status %d\n%s", code, drops.stderr)
	}
	waitSnapshot(t, top, "a snapshot with every drop", func(rec topRecord) bool { return rec.drops() == drop })
	peak := peakResidentBytes(t, top.cmd.Process.Pid)
	if code := top.stop(t, syscall.SIGINT); code != 0 {
		t.Fatalf("top-sources: exit status %d\n%s", code, top.stderr)
	}
	rec := lastSnapshot(t, top)
	t.Logf("%d refused flows in %s (kernel drops %d); top-sources: rows + other %d, peak RSS %.1f MiB, tracked %d of %d",
		res.Refused, res.Elapsed.Round(time.Millisecond), drop, rec.drops(), float64(peak)/(1<<20), rec.Tracked, rec.Capacity)
	if rec.drops() != drop {
		t.Errorf("top-sources attributes %d drops at the end, the kernel counted %d", rec.drops(), drop)
	}
	checkMemoryBound(t, "top-sources' peak resident memory", peak)
	assertNothingLoaded(t)
}

// Torture: the reader stopped (SIGSTOP) in the middle of a flood, so the
// ring buffer overflows, then continued; and another run killed (SIGKILL)
// mid-flood. Whatever was not delivered is counted as lost, exactly; after
// the kill no program, map or link of cttrace's remains.
func TestTortureStoppedAndKilledMidFlood(t *testing.T) {
	eachBackend(t, func(t *testing.T, backend string) {
		packets, rate := 40_000, 20_000
		if testbed.Tier() == testbed.VM {
			packets, rate = 6_000, 3_000
		}
		lab := fullTable(t, 32)
		netns := "/run/netns/" + lab.Name()
		flood := func(seed uint64) <-chan error {
			done := make(chan error, 1)
			go func() {
				res, err := lab.Flood(ctlab.FloodSpec{Random: true, Packets: packets, Rate: rate, Seed: seed})
				if err == nil && res.Refused != packets {
					t.Errorf("flood: %d of %d refused", res.Refused, packets)
				}
				done <- err
			}()
			return done
		}
		// waitDrops waits until the kernel has refused n more flows.
		waitDrops := func(since ctlab.Stats, n int64) {
			t.Helper()
			deadline := time.Now().Add(2 * time.Minute)
			for {
				now, err := lab.Stats()
				if err != nil {
					t.Fatal(err)
				}
				if now.Sub(since).Drop >= n {
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("the kernel refused %d flows in two minutes, waiting for %d", now.Sub(since).Drop, n)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}

		// Stopped and continued: every event every one by one, into a
		// small ring, so that stopping the reader loses some.
		r := startDrops(t, nil, "-o", "json", "--backend", backend, "--netns", netns, "--stream-limit", "0", "--ring-size", "16K")
		before, err := lab.Stats()
		if err != nil {
			t.Fatal(err)
		}
		done := flood(21)
		waitDrops(before, int64(packets/4))
		r.cmd.Process.Signal(syscall.SIGSTOP)
		waitDrops(before, int64(packets/2))
		r.cmd.Process.Signal(syscall.SIGCONT)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		after, err := lab.Stats()
		if err != nil {
			t.Fatal(err)
		}
		drop := after.Sub(before).Drop
		if code := r.stop(t, syscall.SIGINT); code != 0 {
			t.Fatalf("exit status %d after SIGSTOP, SIGCONT and SIGINT\n%s", code, r.stderr)
		}
		checkLossAccounted(t, r, drop)

		// Killed mid-flood.
		r = startDrops(t, nil, "-o", "json", "--backend", backend, "--netns", netns)
		before, err = lab.Stats()
		if err != nil {
			t.Fatal(err)
		}
		done = flood(22)
		waitDrops(before, int64(packets/4))
		r.cmd.Process.Signal(syscall.SIGKILL)
		r.wait(t, time.Minute)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(r.stdout.String(), `"type":"event"`) {
			t.Errorf("no event streamed before the kill: the flood did not reach cttrace")
		}
		assertNothingLoaded(t)
	})
}

// Torture, in the VM tier where nf_conntrack is a module: its users are
// removed and it is unloaded while cttrace runs, then loaded again.
// cttrace never hangs or crashes: on kprobe and tracepoint it ends with
// status 1 and a message that says what happened, after its summary; on
// fentry the kernel refuses the unload (a trampoline that calls into a
// module pins it, since Linux 5.18) and cttrace goes on. Without the
// module, features and drops agree: both exit 1 saying it is not loaded.
func TestTortureConntrackUnloaded(t *testing.T) {
	if testbed.Tier() != testbed.VM {
		t.Skip("unloading nf_conntrack would take the machine's own connection state with it: the VM tier does it")
	}
	if _, err := os.Stat("/sys/module/nf_conntrack/holders"); err != nil {
		t.Skip("nf_conntrack is built into this kernel: it cannot be unloaded")
	}
	eachBackend(t, func(t *testing.T, backend string) {
		r := startDrops(t, nil, "-o", "json", "--backend", backend)
		removed, err := unloadConntrack(t)
		defer reloadModules(t, removed)
		if err != nil {
			if backend != "fentry" {
				t.Fatalf("unload nf_conntrack: %v", err)
			}
			t.Logf("fentry: the kernel kept nf_conntrack (%v)", err)
			select {
			case <-r.exited:
				t.Fatalf("cttrace ended although nf_conntrack stayed: %v\n%s", r.err, r.stderr)
			default:
			}
			if code := r.stop(t, syscall.SIGINT); code != 0 {
				t.Fatalf("exit status %d\n%s", code, r.stderr)
			}
			return
		}
		code := r.wait(t, time.Minute)
		recs := records(t, r.stdout.Bytes())
		if code != exitRuntime || !strings.Contains(r.stderr.String(), "cttrace: nf_conntrack was unloaded while cttrace ran") ||
			len(recs) == 0 || recs[len(recs)-1]["type"] != "summary" {
			t.Fatalf("after the unload: exit status %d, stderr:\n%s\nstdout:\n%s", code, r.stderr, r.stdout)
		}
		for _, args := range [][]string{{"features"}, {"drops", "--duration", "1s"}} {
			cmd := cttrace(args...)
			out, _ := cmd.CombinedOutput()
			if cmd.ProcessState.ExitCode() != exitRuntime || !strings.Contains(string(out), "cttrace: nf_conntrack is not loaded") {
				t.Errorf("cttrace %v without nf_conntrack: exit status %d:\n%s", args, cmd.ProcessState.ExitCode(), out)
			}
		}
	})
	assertNothingLoaded(t)
}

// unloadConntrack removes nf_conntrack and every module that holds it,
// holders first, and returns the modules removed (in removal order) for
// reloadModules. It stops at the first module the kernel keeps.
func unloadConntrack(t *testing.T) ([]string, error) {
	t.Helper()
	var order []string
	seen := map[string]bool{}
	var visit func(m string)
	visit = func(m string) {
		if seen[m] {
			return
		}
		seen[m] = true
		holders, _ := os.ReadDir("/sys/module/" + m + "/holders")
		for _, h := range holders {
			visit(h.Name())
		}
		order = append(order, m)
	}
	visit("nf_conntrack")
	var removed []string
	for _, m := range order {
		if out, err := exec.Command("rmmod", m).CombinedOutput(); err != nil {
			return removed, fmt.Errorf("rmmod %s: %v: %s", m, err, strings.TrimSpace(string(out)))
		}
		removed = append(removed, m)
	}
	return removed, nil
}

// reloadModules loads back what unloadConntrack removed, nf_conntrack first,
// so that the tests after this one find the kernel as they expect.
func reloadModules(t *testing.T, removed []string) {
	t.Helper()
	for i := len(removed) - 1; i >= 0; i-- {
		if out, err := exec.Command("modprobe", testbed.ModprobeArgs(removed[i])...).CombinedOutput(); err != nil {
			t.Errorf("modprobe %s: %v: %s", removed[i], err, out)
		}
	}
	if _, err := os.Stat("/proc/sys/net/netfilter/nf_conntrack_max"); err != nil {
		t.Errorf("nf_conntrack is not back: %v", err)
	}
}
