//go:build privileged

package session

import (
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/cttrace/cttrace/internal/ctlab"
	"github.com/cttrace/cttrace/internal/testbed"
	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/probe"
)

// With the per-flow hooks attached on pressure (--hooks on-pressure):
//   - a healthy table's admitted flows run none of cttrace's programs, by
//     the kernel's own run counts (while attached, each flow runs several);
//   - refusals are counted exactly from the first, against the kernel's
//     drop counter, before any per-flow hook is attached;
//   - the first refusal attaches them, and later refusals are counted
//     under their source;
//   - once the full table is gone, a quiet period detaches them, and the
//     next refusals are counted exactly again, from the first.
func TestHooksOnPressure(t *testing.T) {
	perFlowBackends(t, func(t *testing.T, b probe.Backend) {
		st, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
		if err != nil {
			t.Fatalf("turn on the kernel's BPF run counts: %v", err)
		}
		defer st.Close()
		const max = 256
		ctlab.SetMax(t, max)
		healthy := ctlab.New(t)
		// Refusals only: the fill's own trigger is TestHooksOnFill's.
		s := startOnPressure(t, b, 2)
		wantMode(t, s, ModeHealthy, 0)

		admitted := netip.MustParseAddr("127.40.0.1")
		dst := netip.MustParseAddrPort("127.0.0.1:9")
		runsPerFlow := func(flows int) float64 {
			t.Helper()
			before := runs(t, s)
			sent, refused, err := healthy.SendNewFlows(admitted, dst, flows)
			if err != nil || sent != flows || refused != 0 {
				t.Fatalf("admit %d flows: %d sent, %d refused, %v", flows, sent, refused, err)
			}
			return float64(runs(t, s)-before) / float64(flows)
		}
		if r := runsPerFlow(40); r != 0 {
			t.Errorf("healthy: %.2f program runs per admitted flow, want 0", r)
		}

		// The first refusals attach the hooks; then sources are counted.
		full := ctlab.New(t)
		if err := full.HoldEstablished(max); err != nil {
			t.Fatal(err)
		}
		before := stats(t, full)
		first := netip.MustParseAddr("127.41.0.1")
		start := time.Now()
		if _, _, err := full.SendNewFlows(first, dst, 20); err != nil {
			t.Fatal(err)
		}
		wantMode(t, s, ModePressure, 1)
		attributed := refusedBy(t, s, full, first)
		t.Logf("%s: hooks attached %v after the first refusal (polled); %d of 20 refusals counted under their source",
			b, time.Since(start).Round(time.Millisecond), attributed)
		// With drop reasons (5.17+) the freed packet gives a refusal its
		// source before the hooks are attached.
		if dropReasons(t) && attributed != 20 {
			t.Errorf("%d of 20 refusals under their source, want every one: the kernel has drop reasons", attributed)
		}
		r := runsPerFlow(20)
		t.Logf("%s: %.2f program runs per admitted flow under pressure", b, r)
		if r < 1 {
			t.Errorf("under pressure: %.2f program runs per admitted flow, want at least 1 (the measure sees nothing)", r)
		}
		heavy := netip.MustParseAddr("127.41.0.2")
		if err := full.Refuse(0, heavy, 30); err != nil {
			t.Fatal(err)
		}
		wantRefusedBy(t, s, full, heavy, 30)
		wantExact(t, s, full, before, 50)

		// Quiet: detached, healthy again (the fill does not count here).
		wantMode(t, s, ModeHealthy, 2)
		if r := runsPerFlow(40); r != 0 {
			t.Errorf("healthy again: %.2f program runs per admitted flow, want 0", r)
		}
		before = stats(t, full)
		counted := tableFull(t, s, full.Inode())
		if err := full.Refuse(0, netip.MustParseAddr("127.41.0.3"), 10); err != nil {
			t.Fatal(err)
		}
		drops := uint64(stats(t, full).Sub(before).Drop)
		if got := tableFull(t, s, full.Inode()) - counted; drops != 10 || got != drops {
			t.Errorf("healthy again: table_full counted %d, the kernel's drop counter %d, the test refused 10", got, drops)
		}
	})
}

// A table that reaches the fill mark attaches the per-flow hooks before any
// refusal.
func TestHooksOnFill(t *testing.T) {
	perFlowBackends(t, func(t *testing.T, b probe.Backend) {
		const max = 200
		ctlab.SetMax(t, max)
		lab := ctlab.New(t)
		s := startOnPressure(t, b, DefaultFillHigh)
		before := stats(t, lab)
		if err := lab.HoldEstablished(max * 85 / 100); err != nil {
			t.Fatal(err)
		}
		// Below the mark: stays healthy for a few fill reads.
		deadline := time.Now().Add(3 * fillEvery)
		for time.Now().Before(deadline) {
			if m, _ := s.Mode(); m != ModeHealthy {
				t.Fatalf("at 85 %% of the max: mode %s, want healthy", m)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err := lab.HoldEstablished(max * 5 / 100); err != nil {
			t.Fatal(err)
		}
		wantMode(t, s, ModePressure, 1)
		if d := stats(t, lab).Sub(before); d.Drop != 0 {
			t.Errorf("the kernel dropped %d: the hooks must come before any refusal", d.Drop)
		}
	})
}

// Insert failures no pressure-only hook sees (hash chains too long, 5.15+)
// attach the per-flow hooks through the kernel's own counters, with every
// table far from full and no refusal.
func TestHooksOnInsertFailures(t *testing.T) {
	perFlowBackends(t, func(t *testing.T, b probe.Backend) {
		lab := ctlab.New(t)
		ctlab.SetBuckets(t, 512)
		ctlab.SetMax(t, 1<<20)
		before := stats(t, lab)
		if !before.HasChainTooLong {
			t.Skip("this kernel has no chaintoolong counter (before 5.15): a chain has no length limit")
		}
		s := startOnPressure(t, b, 2) // not the fill
		wantMode(t, s, ModeHealthy, 0)
		var srcs []netip.Addr
		for i := 0; i < 16; i++ {
			srcs = append(srcs, netip.AddrFrom4([4]byte{127, 31, 0, byte(1 + i)}))
		}
		if _, _, err := lab.RawFlood(srcs, netip.MustParseAddrPort("127.0.0.1:9"), scale(50000)); err != nil {
			t.Fatal(err)
		}
		d := stats(t, lab).Sub(before)
		if d.ChainTooLong == 0 || d.Drop != 0 {
			t.Fatalf("test bed off: chaintoolong %d, drop %d", d.ChainTooLong, d.Drop)
		}
		wantMode(t, s, ModePressure, 1)
		t.Logf("%s: %d insert failures (chain too long) attached the per-flow hooks", b, d.InsertFailed)
	})
}

// The switch under a sudden fill: a table at half its max fills within a
// second and a flood is refused. table_full is the kernel's drop count from
// the first refusal, one switch brings the per-flow hooks, and where the
// kernel frees refused packets with a drop reason (5.17+) every refusal is
// under its source; elsewhere only those after the switch are (logged:
// the window docs/backends.md states).
func TestHooksThroughASuddenFill(t *testing.T) {
	perFlowBackends(t, func(t *testing.T, b probe.Backend) {
		const max = 400
		ctlab.SetMax(t, max)
		lab := ctlab.New(t)
		if err := lab.HoldEstablished(max / 2); err != nil {
			t.Fatal(err)
		}
		s := startOnPressure(t, b, DefaultFillHigh)
		wantMode(t, s, ModeHealthy, 0)
		before := stats(t, lab)
		var srcs []netip.Addr
		for i := range 20 {
			srcs = append(srcs, netip.AddrFrom4([4]byte{127, 43, 0, byte(1 + i)}))
		}
		flows := scale(20000)
		start := time.Now()
		if err := lab.HoldEstablished(max / 2); err != nil {
			t.Fatal(err)
		}
		full := time.Since(start)
		sent, refused, err := lab.RawFlood(srcs, netip.MustParseAddrPort("127.0.0.1:9"), flows)
		if err != nil || refused != flows {
			t.Fatalf("flood: %d sent, %d refused of %d: %v", sent, refused, flows, err)
		}
		wantMode(t, s, ModePressure, 1)
		wantExact(t, s, lab, before, uint64(flows))
		var attributed uint64
		for _, src := range srcs {
			attributed += refusedBy(t, s, lab, src)
		}
		t.Logf("%s: half full to full in %v, then %d refusals in %v; %d of them under their source",
			b, full.Round(time.Millisecond), flows, (time.Since(start) - full).Round(time.Millisecond), attributed)
		if dropReasons(t) && attributed != uint64(flows) {
			t.Errorf("%d of %d refusals under their source, want every one: the kernel has drop reasons", attributed, flows)
		}
		if attributed > uint64(flows) {
			t.Errorf("%d refusals under their source, more than the %d refused", attributed, flows)
		}
	})
}

// perFlowBackends is usableBackends for the backends with per-flow hooks
// to switch: the tracepoint backend runs on dropped packets only.
func perFlowBackends(t *testing.T, fn func(t *testing.T, b probe.Backend)) {
	usableBackends(t, func(t *testing.T, b probe.Backend) {
		if b == probe.BackendTracepoint {
			t.Skip("the tracepoint backend has no per-flow hooks: it runs on dropped packets only (docs/backends.md)")
		}
		fn(t, b)
	})
}

// startOnPressure starts a session of backend b counting per source, with
// the per-flow hooks attached at fill high or at the first refusal.
func startOnPressure(t *testing.T, b probe.Backend, high float64) *Session {
	t.Helper()
	quiet := 3 * time.Second
	if testbed.Tier() == testbed.VM {
		quiet = 10 * time.Second
	}
	s, err := Start(Config{Backend: b, Sources: probe.SourceOptions{Enabled: true}, PerFlowOnPressure: true,
		QuietPeriod: quiet, FillHigh: high, Log: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// wantExact checks that the session counted as table_full, in the lab's
// namespace, what the kernel dropped there since before: want refusals.
func wantExact(t *testing.T, s *Session, lab *ctlab.Lab, before ctlab.Stats, want uint64) {
	t.Helper()
	drops := uint64(stats(t, lab).Sub(before).Drop)
	if drops != want {
		t.Fatalf("the kernel dropped %d, the test refused %d: the test bed is off", drops, want)
	}
	if got := tableFull(t, s, lab.Inode()); got != drops {
		t.Errorf("table_full counted %d, the kernel's drop counter %d", got, drops)
	}
}

// dropReasons says whether the kernel frees packets with a drop reason.
func dropReasons(t *testing.T) bool {
	t.Helper()
	f, err := probe.DetectFeatures()
	if err != nil {
		t.Fatal(err)
	}
	x, _ := f.Get(probe.FeatDropReason)
	return x.Usable
}

// wantMode polls until the session runs mode after switches switches.
func wantMode(t *testing.T, s *Session, mode Mode, switches uint64) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		m, n := s.Mode()
		if m == mode && n == switches {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("mode %s after %d switches, want %s after %d", m, n, mode, switches)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func runs(t *testing.T, s *Session) uint64 {
	t.Helper()
	n, err := s.probe.FlowRuns()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// tableFull is what the session counted as table_full in one namespace.
func tableFull(t *testing.T, s *Session, inode uint32) uint64 {
	t.Helper()
	counts, err := s.NamespaceCounts()
	if err != nil {
		t.Fatal(err)
	}
	for ns, c := range counts {
		if ns.Inode == inode {
			return c.Events.Of(event.ReasonTableFull)
		}
	}
	return 0
}

// wantRefusedBy checks that the kernel's per-source map holds want
// refusals of src in the lab's namespace.
func wantRefusedBy(t *testing.T, s *Session, lab *ctlab.Lab, src netip.Addr, want uint64) {
	t.Helper()
	if got := refusedBy(t, s, lab, src); got != want {
		t.Errorf("%s: %d refusals under its source, want %d", src, got, want)
	}
}

// refusedBy is what the kernel's per-source map holds of src's refusals in
// the lab's namespace.
func refusedBy(t *testing.T, s *Session, lab *ctlab.Lab, src netip.Addr) uint64 {
	t.Helper()
	var got uint64
	err := s.Sources(func(st *event.SourceCounts) error {
		if st.Netns.Inode == lab.Inode() && st.Prefix.Addr() == src {
			got = st.Events.Of(event.ReasonTableFull)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}
