//go:build privileged

package probe

import (
	"maps"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	ebpffeatures "github.com/cilium/ebpf/features"

	"github.com/cttrace/cttrace/internal/ctlab"
	"github.com/cttrace/cttrace/internal/testbed"
	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/host"
)

// DropSources removes exactly the sources it names, IPv4 and IPv6, from
// the kernel's map: the keys user space builds from what it read are the
// kernel's. A key that did not match would leave a spoofed flood's
// sources in the map for good, silently.
func TestDropSourcesRemovesWhatItNames(t *testing.T) {
	const max = 8
	ctlab.SetMax(t, max)
	p, _ := attachCountingSources(t)
	lab := ctlab.New(t)
	v4, v6, kept := netip.MustParseAddr("127.95.0.1"), netip.MustParseAddr("fd00:c7::95:1"), netip.MustParseAddr("127.95.0.2")
	if err := lab.Refuse(max, v4, 3); err != nil {
		t.Fatal(err)
	}
	if err := lab.Refuse(0, kept, 4); err != nil {
		t.Fatal(err)
	}
	if res, err := lab.Flood(ctlab.FloodSpec{IPv6: true, SourceBase: v6, Packets: 5}); err != nil || res.Refused != 5 {
		t.Fatalf("ipv6 flood: %+v, %v", res, err)
	}
	clock, err := event.NewClock()
	if err != nil {
		t.Fatal(err)
	}
	refused := func() map[netip.Addr]uint64 {
		t.Helper()
		out := map[netip.Addr]uint64{}
		err := p.Sources(clock, func(st *event.SourceCounts) error {
			if n := st.Events.Of(event.ReasonTableFull); n > 0 && st.Netns.Inode == lab.Inode() {
				out[st.Prefix.Addr()] = n
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	got := refused()
	if got[v4] != 3 || got[kept] != 4 || got[v6] != 5 {
		t.Fatalf("before: %v, want %s 3, %s 4, %s 5", got, v4, kept, v6)
	}
	ns := event.Netns{}
	if err := p.Sources(clock, func(st *event.SourceCounts) error {
		if st.Netns.Inode == lab.Inode() {
			ns = st.Netns
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// First a key the map does not hold: the batch stops there, and the
	// rest are still removed.
	drop := []event.SourceKey{{Netns: ns, Prefix: netip.MustParsePrefix("127.95.0.99/32")},
		{Netns: ns, Prefix: netip.PrefixFrom(v4, 32)}, {Netns: ns, Prefix: netip.PrefixFrom(v6, 128)}}
	last := map[netip.Addr]uint64{}
	err = p.DropSources(drop, clock, func(st *event.SourceCounts) {
		last[st.Prefix.Addr()] = st.Events.Of(event.ReasonTableFull)
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := refused(); len(got) != 1 || got[kept] != 4 {
		t.Errorf("after dropping %s and %s: %v, want only %s at 4", v4, v6, got, kept)
	}
	// 5.14 returns what it deletes (canRemoveExactly); earlier kernels
	// delete in batches and say nothing.
	if exact := testbed.KernelAtLeast(5, 14); p.removesExactly != exact {
		t.Fatalf("removes exactly: %v on %s, want %v", p.removesExactly, host.Release(), exact)
	}
	if want := map[netip.Addr]uint64{v4: 3, v6: 5}; p.removesExactly && !maps.Equal(last, want) {
		t.Errorf("counts as removed: %v, want %v", last, want)
	} else if !p.removesExactly && len(last) != 0 {
		t.Errorf("counts as removed on a kernel that cannot say: %v", last)
	}
}

// A source's last drop is when it was last refused, to a tick: the kernel
// side reads the clock once a tick per CPU (accounting.bpf.h,
// last_drop_time), and a refusal a few ticks later moves it.
func TestLastDropIsWhenRefused(t *testing.T) {
	const max = 8
	ctlab.SetMax(t, max)
	p, b := attachCountingSources(t)
	clock, err := event.NewClock()
	if err != nil {
		t.Fatal(err)
	}
	lab := ctlab.New(t)
	if err := lab.HoldEstablished(max); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: the clock read once a tick (bpf_jiffies64): %v", b, ebpffeatures.HaveProgramHelper(ebpf.RawTracepoint, asm.FnJiffies64) == nil)
	src := netip.MustParseAddr("127.96.0.1")
	// A tick is 1 to 10 ms (HZ 1000 to 100); the clock's conversion to wall
	// time adds well under one.
	const slack = 25 * time.Millisecond
	var last time.Time
	for round := range 3 {
		if round > 0 {
			// Past the previous refusal by more than a tick and the slack,
			// so that a time kept from it is seen as stale.
			time.Sleep(time.Until(last.Add(3 * slack)))
		}
		from := time.Now()
		if err := lab.Refuse(0, src, 5); err != nil {
			t.Fatal(err)
		}
		to := time.Now()
		last = time.Time{}
		if err := p.Sources(clock, func(st *event.SourceCounts) error {
			if st.Netns.Inode == lab.Inode() && st.Prefix.Addr() == src {
				last = st.LastDrop
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if last.Before(from.Add(-slack)) || last.After(to.Add(slack)) {
			t.Fatalf("round %d: last drop at %s, refused between %s and %s",
				round, last.Format(time.StampMicro), from.Format(time.StampMicro), to.Format(time.StampMicro))
		}
	}
}

// attachCountingSources attaches the backend an automatic choice takes,
// counting per source, until the test ends.
func attachCountingSources(t *testing.T) (*Probe, Backend) {
	t.Helper()
	testbed.RequireRoot(t)
	f, err := DetectBackends()
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := f.ChooseBackend(BackendAuto)
	if err != nil {
		t.Fatal(err)
	}
	p, err := Attach(f, b, Options{Sources: SourceOptions{Enabled: true}})
	if err != nil {
		t.Fatalf("attach: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p, b
}
