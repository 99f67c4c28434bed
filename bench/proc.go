package bench

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// userHZ is the unit of /proc/PID/stat's times (USER_HZ, 100 on Linux).
const userHZ = 100

// ProcCPU is a process's user + system time (all its threads, dead ones
// included), fields 14 and 15 of /proc/PID/stat, at clock-tick resolution.
func ProcCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected %q", pid, s)
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state)
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}
	var ticks uint64
	for _, k := range []int{14, 15} {
		n, err := strconv.ParseUint(f[k-3], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat field %d: %w", pid, k, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

// procStatus reads one "Key: value kB" line of /proc/PID/status, in bytes.
func procStatus(pid int, key string) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != key {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) == 0 {
			break
		}
		n, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return 0, err
		}
		if len(fields) > 1 && fields[1] == "kB" {
			n <<= 10
		}
		return n, nil
	}
	return 0, fmt.Errorf("/proc/%d/status: no %s", pid, key)
}

// PeakRSS is a process's peak resident set size (VmHWM), in bytes.
func PeakRSS(pid int) (int64, error) { return procStatus(pid, "VmHWM") }

// WriteChars is the bytes a process wrote so far (wchar of /proc/PID/io,
// /dev/null included).
func WriteChars(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "wchar: "); ok {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("/proc/%d/io: no wchar", pid)
}

// ProgramIDs lists the BPF programs a process holds: the prog_id of each
// descriptor (programs and links) in /proc/PID/fdinfo.
func ProgramIDs(pid int) ([]uint32, error) {
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	seen := map[uint32]bool{}
	var ids []uint32
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		for _, line := range strings.Split(string(b), "\n") {
			v, ok := strings.CutPrefix(line, "prog_id:")
			if !ok {
				continue
			}
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
			if err == nil && !seen[uint32(n)] {
				seen[uint32(n)] = true
				ids = append(ids, uint32(n))
			}
		}
	}
	return ids, nil
}

// ProgStats is one program's run statistics as bpftool reports them (the
// kernel counts only while statistics are enabled).
type ProgStats struct {
	ID        uint32 `json:"id"`
	Name      string `json:"name"`
	RunTimeNs uint64 `json:"run_time_ns"`
	RunCnt    uint64 `json:"run_cnt"`
}

// BPFToolStats runs `bpftool prog show -j` and returns the statistics of
// the programs in ids (all when ids is empty).
func BPFToolStats(ids []uint32) (map[uint32]ProgStats, error) {
	out, err := exec.Command("bpftool", "prog", "show", "-j").Output()
	if err != nil {
		var ee *exec.ExitError
		if asExit(err, &ee) {
			return nil, fmt.Errorf("bpftool prog show: %w: %s", err, bytes.TrimSpace(ee.Stderr))
		}
		return nil, fmt.Errorf("bpftool prog show (apt-get install bpftool): %w", err)
	}
	var all []ProgStats
	if err := json.Unmarshal(out, &all); err != nil {
		return nil, fmt.Errorf("bpftool prog show -j: %w", err)
	}
	want := map[uint32]bool{}
	for _, id := range ids {
		want[id] = true
	}
	m := map[uint32]ProgStats{}
	for _, p := range all {
		if len(want) == 0 || want[p.ID] {
			m[p.ID] = p
		}
	}
	return m, nil
}

func asExit(err error, ee **exec.ExitError) bool {
	e, ok := err.(*exec.ExitError)
	if ok {
		*ee = e
	}
	return ok
}

// SumStats adds after - before over the programs of after.
func SumStats(before, after map[uint32]ProgStats) (runTimeNs, runCnt uint64) {
	for id, a := range after {
		b := before[id]
		runTimeNs += a.RunTimeNs - b.RunTimeNs
		runCnt += a.RunCnt - b.RunCnt
	}
	return runTimeNs, runCnt
}

// StatsSysctl is kernel.bpf_stats_enabled.
const StatsSysctl = "/proc/sys/kernel/bpf_stats_enabled"

// ReadStatsSysctl reads kernel.bpf_stats_enabled.
func ReadStatsSysctl() (string, error) {
	b, err := os.ReadFile(StatsSysctl)
	return strings.TrimSpace(string(b)), err
}

// WriteStatsSysctl sets kernel.bpf_stats_enabled.
func WriteStatsSysctl(v string) error {
	return os.WriteFile(StatsSysctl, []byte(v), 0)
}

// EnableStats turns BPF run statistics on until Close, like
// kernel.bpf_stats_enabled=1 but through a descriptor (BPF_ENABLE_STATS),
// so that they go off again even if this process is killed.
func EnableStats() (io.Closer, error) {
	c, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return nil, fmt.Errorf("enable BPF statistics: %w", err)
	}
	return c, nil
}

// MountTracefs mounts tracefs on /sys/kernel/tracing unless it is; mounted
// says whether this call did (the caller may unmount it).
func MountTracefs() (mounted bool, err error) {
	const dir = "/sys/kernel/tracing"
	if _, err := os.Stat(filepath.Join(dir, "events")); err == nil {
		return false, nil
	}
	if err := unix.Mount("nodev", dir, "tracefs", 0, ""); err != nil {
		return false, fmt.Errorf("mount tracefs on %s: %w", dir, err)
	}
	return true, nil
}

// SelfCPU is this process's user + system time (getrusage), microsecond
// resolution: the flooding thread's time lands here.
func SelfCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
