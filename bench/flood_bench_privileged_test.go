//go:build privileged

package bench

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cttrace/cttrace/internal/ctlab"
	"github.com/cttrace/cttrace/internal/testbed"
	"golang.org/x/sys/unix"
)

// TestFloodBench is `make bench`: a benchmark, not a test, so it runs only
// with CTTRACE_BENCH=1. Settings come from BENCH_* variables (see
// bench/README.md); results go to BENCH_OUT.
func TestFloodBench(t *testing.T) {
	if os.Getenv("CTTRACE_BENCH") != "1" {
		t.Skip("a benchmark: `make bench` runs it (CTTRACE_BENCH=1)")
	}
	testbed.RequireRoot(t)
	cfg := loadConfig(t)

	root := repoRoot(t)
	out := cfg.out
	if out == "" {
		out = filepath.Join(root, "build", "bench", time.Now().Format("20060102-150405"))
	}
	raw := filepath.Join(out, "raw")
	if err := os.MkdirAll(raw, 0o755); err != nil {
		t.Fatal(err)
	}
	env := Env{ScriptDir: filepath.Join(root, "bench", "bpftrace"), Dir: raw}
	env.Cttrace = binary(t, root, cfg.cttrace, filepath.Join(root, "build", "cttrace"), "./cmd/cttrace")
	env.StreamLimit = hasFlag(env.Cttrace, "drops", "--stream-limit")
	cttraceDesc := fmt.Sprintf("cttrace %s (built from the tree)", gitRev(root))
	if cfg.external {
		cttraceDesc = fmt.Sprintf("cttrace binary %s (sha256 %s)", cfg.cttrace, fileSum(cfg.cttrace))
	}
	if !env.StreamLimit {
		cttraceDesc += ", whose drops has no --stream-limit (it streams every event)"
	}
	env.Floor = binary(t, root, cfg.floor, filepath.Join(out, "ctfloor"), "./bench/cmd/ctfloor")

	if _, err := MountTracefs(); err != nil {
		t.Fatal(err)
	}
	reason, err := TracefsNetfilterDropReason()
	if err != nil {
		t.Fatal(err)
	}
	if r, err := NetfilterDropReason(); err != nil {
		t.Fatal(err)
	} else if r != reason {
		t.Fatalf("NETFILTER_DROP is %d in BTF but %d in the tracepoint's format", r, reason)
	}
	env.Reason = reason
	var kinds []Kind
	for _, k := range cfg.kinds {
		if k == BPFTraceCount || k == BPFTracePerSource {
			if env.BPFTrace == "" {
				if env.BPFTrace, err = exec.LookPath("bpftrace"); err != nil {
					t.Logf("no bpftrace (apt-get install bpftrace): %s left out", k)
					continue
				}
			}
		}
		kinds = append(kinds, k)
	}
	if _, err := exec.LookPath("bpftool"); err != nil {
		t.Fatal("bpftool is needed for BPF run times (apt-get install bpftool)")
	}

	// The global nf_conntrack_max is shared with every privileged test:
	// SetMax waits for whoever holds it. Until then nothing is changed, and
	// Ctrl-C simply ends the process.
	if busy, err := lockBusy(); err == nil && busy {
		fmt.Fprintf(os.Stderr, "bench: waiting for another process holding %s (a privileged test changing nf_conntrack_max?)\n", ctlab.LockPath)
	}
	ctlab.SetMax(t, cfg.max)
	// From here on, Ctrl-C or SIGTERM stop the run between steps and
	// return, so that every cleanup runs (tracers, BPF statistics, the
	// lab, the sysctls).
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	t.Cleanup(stop)
	lab := ctlab.New(t)
	if err := lab.HoldEstablished(cfg.max); err != nil {
		t.Fatal(err)
	}
	// Rates are measured with BPF statistics off; the statistics flood
	// turns them on through a descriptor (gone with this process).
	orig, err := ReadStatsSysctl()
	if err != nil {
		t.Fatal(err)
	}
	if orig != "0" {
		t.Logf("kernel.bpf_stats_enabled was %s: 0 during the bench, restored after", orig)
		if err := WriteStatsSysctl("0"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := WriteStatsSysctl(orig); err != nil {
				t.Errorf("restore kernel.bpf_stats_enabled=%s: %v", orig, err)
			}
		})
	}

	if s, err := settled(ctx, lab); err != nil {
		t.Fatal(err)
	} else if s.Entries != int64(cfg.max) {
		t.Fatalf("table holds %d entries after HoldEstablished(%d)", s.Entries, cfg.max)
	}
	env.Netns, env.NetnsInode = lab.Namespace().Path, lab.Inode()

	points := cfg.points()
	opt := Options{Rounds: cfg.rounds, Points: points, Kinds: kinds, StatsDivisor: 4, Log: os.Stderr}
	fmt.Fprintf(os.Stderr, "bench: %d rounds × %d floods × %d tracers, %d packets at the maximum rate, into %s (nf_conntrack_max %d, held full); results in %s\n",
		cfg.rounds, len(points), len(kinds), cfg.packets, lab.Name(), cfg.max, out)
	began, load0 := time.Now(), loadAvg()
	samples, runErr := Run(ctx, lab, env, opt)

	backend := cttraceBackend(env.Cttrace)
	for _, s := range samples {
		if s.Backend != "" && s.Kind != FloorProg {
			backend = s.Backend
			break
		}
	}
	uname := unameRelease()
	header := Header(uname, backend, runtime.NumCPU(),
		cttraceDesc,
		time.Now().UTC().Format("2006-01-02 15:04 UTC"),
		fmt.Sprintf("median of %d rounds", cfg.rounds),
		fmt.Sprintf("%d refused flows per flood at the maximum rate (a quarter of that with BPF statistics on)", cfg.packets),
		fmt.Sprintf("rate sweep from %d sources", cfg.sources),
		fmt.Sprintf("NETFILTER_DROP = %d", reason),
		fmt.Sprintf("took %v", time.Since(began).Round(time.Second)),
		fmt.Sprintf("load average %s before, %s after (other work on the machine skews the ratios)", load0, loadAvg()))
	if runErr != nil {
		header += fmt.Sprintf("\n\nINCOMPLETE: %v", runErr)
	}
	rows := Aggregate(samples, points, kinds)
	var md strings.Builder
	Markdown(&md, header, rows)
	fmt.Print("\n" + md.String())
	if err := os.WriteFile(filepath.Join(out, "results.md"), []byte(md.String()), 0o644); err != nil {
		t.Error(err)
	}
	if b, err := json.MarshalIndent(samples, "", "  "); err == nil {
		os.WriteFile(filepath.Join(out, "samples.json"), b, 0o644)
	}
	chartTitle := fmt.Sprintf("conntrack drop tracing on %s (%s backend, %d CPUs)", uname, backend, runtime.NumCPU())
	if err := Chart(filepath.Join(out, "chart.png"), chartTitle, rows, kinds); err != nil {
		t.Logf("chart: %v", err)
	}
	fmt.Fprintf(os.Stderr, "bench: wrote %s/results.md, chart.png, samples.json\n", out)
	if errors.Is(runErr, context.Canceled) {
		t.Fatal("interrupted: partial results written, everything cleaned up")
	}
	if runErr != nil {
		t.Fatal(runErr)
	}
}

type config struct {
	rounds, packets, sources, max int
	paced                         time.Duration
	quick                         bool
	external                      bool // cttrace is CTTRACE_BIN, not the tree's
	kinds                         []Kind
	out, cttrace, floor           string
}

func loadConfig(t *testing.T) config {
	c := config{rounds: 5, packets: 200000, sources: 1000, max: 64, paced: 1500 * time.Millisecond, kinds: AllKinds}
	c.quick = os.Getenv("BENCH_QUICK") == "1"
	if c.quick {
		c.rounds, c.packets, c.paced = 3, 100000, time.Second
	}
	for _, v := range []struct {
		name string
		to   *int
	}{{"BENCH_ROUNDS", &c.rounds}, {"BENCH_PACKETS", &c.packets}, {"BENCH_SOURCES", &c.sources}, {"BENCH_MAX", &c.max}} {
		if s := os.Getenv(v.name); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 {
				t.Fatalf("%s=%q: want a positive number", v.name, s)
			}
			*v.to = n
		}
	}
	if s := os.Getenv("BENCH_PACED"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			t.Fatalf("BENCH_PACED=%q: want a duration such as 2s", s)
		}
		c.paced = d
	}
	if s := os.Getenv("BENCH_TRACERS"); s != "" {
		c.kinds = nil
		for _, name := range strings.Split(s, ",") {
			k := Kind(strings.TrimSpace(name))
			found := false
			for _, known := range KnownKinds {
				found = found || known == k
			}
			if !found {
				t.Fatalf("BENCH_TRACERS: unknown %q (want some of %v)", k, KnownKinds)
			}
			c.kinds = append(c.kinds, k)
		}
		if c.kinds[0] != Untraced {
			c.kinds = append([]Kind{Untraced}, c.kinds...) // ratios need it
		}
	}
	c.out, c.cttrace, c.floor = os.Getenv("BENCH_OUT"), os.Getenv("CTTRACE_BIN"), os.Getenv("BENCH_FLOOR")
	c.external = c.cttrace != ""
	if c.cttrace == "" {
		c.cttrace = os.Getenv("BENCH_CTTRACE")
	}
	if c.cttrace != "" {
		abs, err := filepath.Abs(c.cttrace)
		if err != nil {
			t.Fatal(err)
		}
		if st, err := os.Stat(abs); err != nil || st.Mode()&0o111 == 0 {
			t.Fatalf("CTTRACE_BIN=%s: not an executable file (%v)", c.cttrace, err)
		}
		c.cttrace = abs
	}
	return c
}

// points are the floods of both sweeps: drop rate (from c.sources distinct
// sources) and distinct sources (at the maximum rate). The maximum rate
// from c.sources sources belongs to both.
func (c config) points() []Point {
	paced := func(rate int) Point {
		return Point{Sweep: "rate", Label: fmt.Sprintf("%dk/s", rate/1000),
			Spec: ctlab.FloodSpec{Sources: c.sources, Rate: rate, Packets: int(float64(rate) * c.paced.Seconds())}}
	}
	maxLabel := fmt.Sprintf("max, %s", sourcesLabel(c.sources))
	top := Point{Sweep: "rate", Label: maxLabel, Spec: ctlab.FloodSpec{Sources: c.sources, Packets: c.packets}}
	random := Point{Sweep: "sources", Label: "max, random", Spec: ctlab.FloodSpec{Random: true, Seed: 1, Packets: c.packets}}
	if c.quick {
		return []Point{paced(50000), top, random}
	}
	var ps []Point
	for _, r := range []int{10000, 50000, 100000} {
		ps = append(ps, paced(r))
	}
	ps = append(ps, top)
	for _, n := range []int{1, 100000} {
		if n != c.sources {
			ps = append(ps, Point{Sweep: "sources", Label: "max, " + sourcesLabel(n), Spec: ctlab.FloodSpec{Sources: n, Packets: c.packets}})
		}
	}
	return append(ps, random)
}

func sourcesLabel(n int) string {
	switch {
	case n == 1:
		return "1 source"
	case n%1000 == 0:
		return fmt.Sprintf("%dk sources", n/1000)
	}
	return fmt.Sprintf("%d sources", n)
}

// binary returns path if set, else builds pkg into def (go build, retried:
// someone may be in the middle of an edit).
func binary(t *testing.T, root, path, def, pkg string) string {
	if path != "" {
		return path
	}
	var out []byte
	var err error
	for attempt := range 3 {
		cmd := exec.Command("go", "build", "-o", def, pkg)
		cmd.Dir = root
		if out, err = cmd.CombinedOutput(); err == nil {
			return def
		}
		t.Logf("go build %s (attempt %d): %v: %s", pkg, attempt+1, err, out)
		time.Sleep(30 * time.Second)
	}
	t.Fatalf("go build %s: %v: %s", pkg, err, out)
	return ""
}

func repoRoot(t *testing.T) string {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	// bench/ under go test; wherever the binary was started otherwise.
	for dir := wd; ; dir = filepath.Dir(dir) {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && strings.Contains(string(b), "module github.com/cttrace/cttrace\n") {
			return dir
		}
		if dir == filepath.Dir(dir) {
			t.Fatalf("no cttrace go.mod above %s: run from the repository", wd)
		}
	}
}

func gitRev(root string) string {
	out, err := exec.Command("git", "-C", root, "describe", "--always", "--dirty").Output()
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(out))
}

// lockBusy says whether another process holds ctlab's lock on the global
// conntrack sysctls (a flock on an open file of our own conflicts with
// SetMax's, so it is released at once).
func lockBusy() (bool, error) {
	f, err := os.OpenFile(ctlab.LockPath, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return false, err
	}
	defer f.Close()
	err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	if err == unix.EWOULDBLOCK {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	return false, unix.Flock(int(f.Fd()), unix.LOCK_UN)
}

// hasFlag says whether `bin cmd --help` lists flag (an older cttrace lacks
// some).
func hasFlag(bin, cmd, flag string) bool {
	out, _ := exec.Command(bin, cmd, "--help").CombinedOutput()
	return strings.Contains(string(out), flag+" ") || strings.Contains(string(out), flag+"=")
}

// fileSum is the first 12 hex digits of a file's SHA-256.
func fileSum(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return "?"
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "?"
	}
	return hex.EncodeToString(h.Sum(nil))[:12]
}

// cttraceBackend is the backend `cttrace features` would choose.
func cttraceBackend(bin string) string {
	out, _ := exec.Command(bin, "features").Output()
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "backend (auto): "); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}

// loadAvg is the 1-minute load average.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) > 0 {
		return f[0]
	}
	return "?"
}

func unameRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "?"
	}
	return unix.ByteSliceToString(u.Release[:])
}
