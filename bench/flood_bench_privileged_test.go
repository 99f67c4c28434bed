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
	"slices"
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
	if label := os.Getenv("CTTRACE_VM_KERNEL"); label != "" && cfg.out != "" {
		out = filepath.Join(out, "vm-"+label) // one folder per guest kernel
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	raw := filepath.Join(out, "raw")
	if cfg.raw != "" {
		// Tracers' outputs on a faster file system (the VM's results share
		// is 9p); the small ones are copied into out/raw at the end.
		raw = cfg.raw
		t.Cleanup(func() { copySmall(raw, filepath.Join(out, "raw"), 1<<20) })
	}
	if err := os.MkdirAll(raw, 0o755); err != nil {
		t.Fatal(err)
	}
	env := Env{ScriptDir: filepath.Join(root, "bench", "bpftrace"), Dir: raw}
	env.Cttrace = buildBinary(t, root, cfg.cttrace, filepath.Join(root, "build", "cttrace"), "./cmd/cttrace")
	env.StreamLimit = hasFlag(env.Cttrace, "drops", "--stream-limit")
	cttraceDesc := fmt.Sprintf("cttrace %s (built from the tree)", gitRev(root))
	if cfg.external {
		cttraceDesc = fmt.Sprintf("cttrace binary %s (sha256 %s)", cfg.cttrace, fileSum(cfg.cttrace))
	}
	if !env.StreamLimit {
		cttraceDesc += ", whose drops has no --stream-limit (it streams every event)"
	}
	env.Floor = buildBinary(t, root, cfg.floor, filepath.Join(out, "ctfloor"), "./bench/cmd/ctfloor")

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
	points := cfg.points()
	var refused, steady []Point
	for _, p := range points {
		if p.Steady() {
			steady = append(steady, p)
		} else {
			refused = append(refused, p)
		}
	}
	if len(refused) > 0 {
		ctlab.SetMax(t, cfg.max)
	} else {
		ctlab.SetMax(t, cfg.steadyMax)
	}
	// From here on, Ctrl-C or SIGTERM stop the run between steps and
	// return, so that every cleanup runs (tracers, BPF statistics, the
	// labs, the sysctls).
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	t.Cleanup(stop)
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

	began, load0 := time.Now(), loadAvg()
	var samples []Sample
	var runErr error
	if len(refused) > 0 {
		// Refused flows: a table held full with connections early_drop
		// cannot evict.
		ctlab.SetMax(t, cfg.max)
		lab := ctlab.New(t)
		if err := lab.HoldEstablished(cfg.max); err != nil {
			t.Fatal(err)
		}
		if s, err := settled(ctx, lab); err != nil {
			t.Fatal(err)
		} else if s.Entries != int64(cfg.max) {
			t.Fatalf("table holds %d entries after HoldEstablished(%d)", s.Entries, cfg.max)
		}
		env.Netns, env.NetnsInode = lab.Namespace().Path, lab.Inode()
		opt := Options{Rounds: cfg.rounds, Points: refused, Kinds: kinds, StatsDivisor: 4, Log: os.Stderr}
		fmt.Fprintf(os.Stderr, "bench: %d rounds × %d floods × %d tracers, %d packets at the maximum rate, into %s (nf_conntrack_max %d, held full); results in %s\n",
			cfg.rounds, len(refused), len(kinds), cfg.packets, lab.Name(), cfg.max, out)
		samples, runErr = Run(ctx, lab, env, opt)
	}
	if len(steady) > 0 && runErr == nil {
		// The steady state: a table far from full, every flow admitted.
		ctlab.SetMax(t, cfg.steadyMax)
		lab := ctlab.New(t)
		env.Netns, env.NetnsInode = lab.Namespace().Path, lab.Inode()
		sk := steadyKinds(kinds)
		opt := Options{Rounds: cfg.rounds, Points: steady, Kinds: sk, StatsDivisor: 4, Log: os.Stderr}
		fmt.Fprintf(os.Stderr, "bench: steady state: %d rounds × %d floods × %d tracers, %d new flows each, into %s (nf_conntrack_max %d, flushed before each flood); results in %s\n",
			cfg.rounds, len(steady), len(sk), cfg.steadyFlows, lab.Name(), cfg.steadyMax, out)
		more, err := Run(ctx, lab, env, opt)
		samples, runErr = append(samples, more...), err
	}

	backend := cttraceBackend(env.Cttrace)
	forced := false
	for _, k := range kinds {
		forced = forced || k.Backend() != ""
	}
	if forced {
		backend = fmt.Sprintf("%s when auto (rows with --backend force theirs)", backend)
	} else {
		for _, s := range samples {
			if s.Backend != "" && s.Kind.IsCttrace() {
				backend = s.Backend
				break
			}
		}
	}
	uname := unameRelease()
	parts := []string{cttraceDesc, time.Now().UTC().Format("2006-01-02 15:04 UTC"), fmt.Sprintf("median of %d rounds", cfg.rounds)}
	if len(refused) > 0 {
		parts = append(parts,
			fmt.Sprintf("%d refused flows per flood at the maximum rate (a quarter of that with BPF statistics on)", cfg.packets),
			fmt.Sprintf("rate sweep from %d sources", cfg.sources))
	}
	if len(steady) > 0 {
		parts = append(parts, fmt.Sprintf("steady state: %d new flows per flood (a quarter of that with BPF statistics on), nf_conntrack_max %d", cfg.steadyFlows, cfg.steadyMax))
	}
	parts = append(parts,
		fmt.Sprintf("NETFILTER_DROP = %d", reason),
		fmt.Sprintf("took %v", time.Since(began).Round(time.Second)),
		fmt.Sprintf("load average %s before, %s after (other work on the machine skews the ratios)", load0, loadAvg()))
	header := Header(uname, backend, runtime.NumCPU(), parts...)
	if runErr != nil {
		header += fmt.Sprintf("\n\nINCOMPLETE: %v", runErr)
	}
	rows := append(Aggregate(samples, refused, kinds), Aggregate(samples, steady, steadyKinds(kinds))...)
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
	steadyFlows, steadyMax        int
	paced                         time.Duration
	quick                         bool
	external                      bool // cttrace is CTTRACE_BIN, not the tree's
	kinds                         []Kind
	sweeps                        []string
	only                          []string // BENCH_POINTS: these floods only
	out, cttrace, floor, raw      string
}

// Sweeps BENCH_SWEEPS may name.
var knownSweeps = []string{"rate", "sources", "max", SteadySweep}

func loadConfig(t *testing.T) config {
	c := config{rounds: 5, packets: 200000, sources: 1000, max: 64, paced: 1500 * time.Millisecond, kinds: AllKinds,
		steadyFlows: 50000, steadyMax: 262144, sweeps: []string{"rate", "sources", SteadySweep}}
	c.quick = os.Getenv("BENCH_QUICK") == "1"
	if c.quick {
		c.rounds, c.packets, c.paced, c.steadyFlows = 3, 100000, time.Second, 30000
	}
	for _, v := range []struct {
		name string
		to   *int
	}{{"BENCH_ROUNDS", &c.rounds}, {"BENCH_PACKETS", &c.packets}, {"BENCH_SOURCES", &c.sources}, {"BENCH_MAX", &c.max},
		{"BENCH_STEADY_FLOWS", &c.steadyFlows}, {"BENCH_STEADY_MAX", &c.steadyMax}} {
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
	if s := os.Getenv("BENCH_BACKENDS"); s != "" {
		// Each cttrace tracer once per backend (--backend), in turn.
		var backends []string
		for _, b := range strings.Split(s, ",") {
			b = strings.TrimSpace(b)
			switch b {
			case "auto":
				b = ""
			case "fentry", "kprobe", "tracepoint":
			default:
				t.Fatalf("BENCH_BACKENDS: unknown %q (want some of fentry, kprobe, tracepoint, auto)", b)
			}
			backends = append(backends, b)
		}
		var kinds []Kind
		for _, k := range c.kinds {
			if !k.TakesBackend() {
				kinds = append(kinds, k)
				continue
			}
			for _, b := range backends {
				kinds = append(kinds, k.WithBackend(b))
			}
		}
		c.kinds = kinds
	}
	if s := os.Getenv("BENCH_SWEEPS"); s != "" {
		c.sweeps = nil
		for _, name := range strings.Split(s, ",") {
			name = strings.TrimSpace(name)
			if !slices.Contains(knownSweeps, name) {
				t.Fatalf("BENCH_SWEEPS: unknown %q (want some of %v)", name, knownSweeps)
			}
			c.sweeps = append(c.sweeps, name)
		}
	}
	if s := os.Getenv("BENCH_POINTS"); s != "" {
		for _, l := range strings.Split(s, ";") {
			c.only = append(c.only, strings.TrimSpace(l))
		}
		var labels []string
		for _, p := range c.allPoints() {
			labels = append(labels, p.Label)
		}
		for _, l := range c.only {
			if !slices.Contains(labels, l) {
				t.Fatalf("BENCH_POINTS: no flood %q in the sweeps (%q)", l, labels)
			}
		}
	}
	c.raw = os.Getenv("BENCH_RAW")
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

// points are the floods of the sweeps, only those BENCH_POINTS names if
// set.
func (c config) points() []Point {
	ps := c.allPoints()
	if len(c.only) == 0 {
		return ps
	}
	var out []Point
	for _, p := range ps {
		if slices.Contains(c.only, p.Label) {
			out = append(out, p)
		}
	}
	return out
}

// allPoints are the floods of c.sweeps, each once, in this order: drop
// rate (paced, from c.sources distinct sources, then the maximum rate);
// distinct sources (at the maximum rate); steady state. "max" is the
// maximum rate from c.sources sources and from random ones.
func (c config) allPoints() []Point {
	var ps []Point
	add := func(more ...Point) {
		for _, p := range more {
			if !slices.ContainsFunc(ps, func(q Point) bool { return q.Label == p.Label }) {
				ps = append(ps, p)
			}
		}
	}
	refused := c.refusedPoints()
	for _, sw := range knownSweeps {
		if !slices.Contains(c.sweeps, sw) {
			continue
		}
		for _, p := range refused {
			switch {
			case sw == "max" && strings.HasPrefix(p.Label, "max, ") && (p.Sweep == "rate" || p.Label == "max, random"):
				add(p)
			case p.Sweep == sw:
				add(p)
			}
		}
		if sw == SteadySweep {
			add(Point{Sweep: SteadySweep, Label: "new flows, " + sourcesLabel(c.sources), Spec: ctlab.FloodSpec{Sources: c.sources, Packets: c.steadyFlows}},
				Point{Sweep: SteadySweep, Label: "new flows, random", Spec: ctlab.FloodSpec{Random: true, Seed: 2, Packets: c.steadyFlows}})
		}
	}
	// In the order of the sweeps, whatever the order of BENCH_SWEEPS.
	slices.SortStableFunc(ps, func(a, b Point) int { return sweepOrder(a.Sweep) - sweepOrder(b.Sweep) })
	return ps
}

func sweepOrder(s string) int { return slices.Index(knownSweeps, s) }

// refusedPoints are the floods of both refused-flow sweeps: drop rate (from
// c.sources distinct sources) and distinct sources (at the maximum rate).
// The maximum rate from c.sources sources belongs to both.
func (c config) refusedPoints() []Point {
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

// buildBinary returns path if set, else builds pkg into def (go build, retried:
// someone may be in the middle of an edit).
func buildBinary(t *testing.T, root, path, def, pkg string) string {
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

// steadyKinds are the tracers of the steady state: nothing attached,
// cttrace's commands (with nothing dropped, drops to a file or to
// /dev/null, all or bounded, are the same: the first one selected stands
// for them) and the per-flow floor. The others hook only drops.
func steadyKinds(kinds []Kind) []Kind {
	var out []Kind
	drops := map[string]bool{} // by backend
	for _, k := range kinds {
		switch k.Base() {
		case Untraced, TopSources, TopSourcesOnPressure, FlowFloor:
			out = append(out, k)
		case DropsFile, DropsNull, DropsFileAll:
			if !drops[k.Backend()] {
				drops[k.Backend()] = true
				out = append(out, k)
			}
		}
	}
	return out
}

// copySmall copies the regular files of src smaller than limit into dst.
func copySmall(src, dst string, limit int64) {
	ents, err := os.ReadDir(src)
	if err != nil {
		return
	}
	os.MkdirAll(dst, 0o755)
	for _, e := range ents {
		if info, err := e.Info(); err != nil || !info.Mode().IsRegular() || info.Size() >= limit {
			continue
		}
		if b, err := os.ReadFile(filepath.Join(src, e.Name())); err == nil {
			os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644)
		}
	}
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
