package top

import (
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/probe"
)

// fakeKernel stands for the kernel's per-source map and its totals.
type fakeKernel struct {
	sources map[Key]*probe.SourceTotals
	totals  map[event.Reason]uint64
}

func newFakeKernel() *fakeKernel {
	return &fakeKernel{sources: map[Key]*probe.SourceTotals{}, totals: map[event.Reason]uint64{}}
}

// index of reason r in SourceTotals.Events.
func index(r event.Reason) int {
	for t := 1; ; t++ {
		if event.ReasonFromKernel(uint32(t)) == r {
			return t
		}
	}
}

// add records n events of reason r from src; tracked=false models a source
// the LRU map has pushed out (only the totals see it).
func (k *fakeKernel) add(netns uint32, src string, r event.Reason, n uint64, tracked bool) {
	k.totals[r] += n
	if !tracked {
		return
	}
	key := Key{Netns: netns, Prefix: netip.MustParsePrefix(src)}
	st := k.sources[key]
	if st == nil {
		st = &probe.SourceTotals{Netns: netns, Prefix: key.Prefix}
		k.sources[key] = st
	}
	st.Events[index(r)] += n
}

func (k *fakeKernel) each(fn func(*Source) error) error {
	for _, st := range k.sources {
		if err := fn(st); err != nil {
			return err
		}
	}
	return nil
}

func (k *fakeKernel) totalsNow() (map[event.Reason]uint64, error) { return k.totals, nil }

func TestRowsPlusOtherEqualKernelTotals(t *testing.T) {
	k := newFakeKernel()
	start := time.Unix(1000, 0)
	a := New(Options{Sort: SortDrops, Limit: 2, Capacity: 10}, start)
	k.add(1, "10.0.0.1/32", event.ReasonTableFull, 50, true)
	k.add(1, "10.0.0.2/32", event.ReasonTableFull, 30, true)
	k.add(1, "10.0.0.3/32", event.ReasonInsertFailed, 5, true)
	k.add(1, "10.0.0.4/32", event.ReasonTableFull, 7, false) // pushed out
	k.add(1, "10.0.0.1/32", event.ReasonInsert, 9, true)
	s, err := a.Snapshot(start.Add(2*time.Second), k.each, k.totalsNow, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Rows) != 2 || s.Rows[0].Prefix.String() != "10.0.0.1/32" || s.Rows[1].Prefix.String() != "10.0.0.2/32" {
		t.Fatalf("rows %+v, want 10.0.0.1 then 10.0.0.2", s.Rows)
	}
	if PerSec(s.Rows[0].Rate.Drops, s.Interval) != 25 || s.Rows[0].Held != 9 {
		t.Errorf("first row: %.1f drops/s, held %d; want 25 and 9", PerSec(s.Rows[0].Rate.Drops, s.Interval), s.Rows[0].Held)
	}
	var drops, inserts uint64
	for _, r := range s.Rows {
		drops += r.Total.Drops
		inserts += r.Total.Inserts
	}
	if drops+s.Other.Total.Drops != 92 || inserts+s.Other.Total.Inserts != 9 {
		t.Errorf("rows + other: %d drops, %d inserts; kernel 92 and 9", drops+s.Other.Total.Drops, inserts+s.Other.Total.Inserts)
	}
	if s.Other.Total.Drops != 12 {
		t.Errorf("other has %d drops, want 12 (10.0.0.3 past the limit, 10.0.0.4 untracked)", s.Other.Total.Drops)
	}

	// Next interval: rates are this interval's; a source that vanished from
	// the kernel map means the bound is in effect.
	k.add(1, "10.0.0.2/32", event.ReasonTableFull, 100, true)
	delete(k.sources, Key{Netns: 1, Prefix: netip.MustParsePrefix("10.0.0.3/32")})
	s, err = a.Snapshot(start.Add(3*time.Second), k.each, k.totalsNow, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.Rows[0].Prefix.String() != "10.0.0.2/32" || s.Rows[0].Rate.Drops != 100 || s.Rows[1].Rate.Drops != 0 {
		t.Fatalf("second interval rows %+v", s.Rows)
	}
	if !s.Bounded {
		t.Error("a source left the kernel map but the view does not say the bound is in effect")
	}
}

// A source pushed out of the kernel's LRU map comes back counting from
// zero: its rate is what it counted since, not a wrapped difference.
func TestSourceBackInTheMapHasASaneRate(t *testing.T) {
	k := newFakeKernel()
	start := time.Unix(0, 0)
	a := New(Options{Sort: SortDrops, Limit: 5}, start)
	k.add(1, "10.0.0.1/32", event.ReasonTableFull, 100, true)
	if _, err := a.Snapshot(start.Add(time.Second), k.each, k.totalsNow, nil); err != nil {
		t.Fatal(err)
	}
	k.sources[Key{Netns: 1, Prefix: netip.MustParsePrefix("10.0.0.1/32")}].Events[index(event.ReasonTableFull)] = 3
	k.totals[event.ReasonTableFull] += 3
	s, err := a.Snapshot(start.Add(2*time.Second), k.each, k.totalsNow, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.Rows[0].Rate.Drops != 3 || s.Other.Rate.Drops > 100 {
		t.Fatalf("rate after re-entry %d (other %d), want 3", s.Rows[0].Rate.Drops, s.Other.Rate.Drops)
	}
}

// A row that only holds seeded entries can push a counted source off the
// list; that source's counts must then be in Other.
func TestPushedOffRowsKeepTheirCountsInOther(t *testing.T) {
	k := newFakeKernel()
	start := time.Unix(0, 0)
	a := New(Options{Sort: SortHeld, Limit: 1}, start)
	a.Seed(Key{Netns: 1, Prefix: netip.MustParsePrefix("10.0.0.1/32")}, 3)
	k.add(1, "10.0.0.2/32", event.ReasonInsert, 2, true)
	k.add(1, "10.0.0.2/32", event.ReasonTableFull, 5, true)
	s, err := a.Snapshot(start.Add(time.Second), k.each, k.totalsNow, nil)
	if err != nil {
		t.Fatal(err)
	}
	var drops, inserts uint64
	for _, r := range s.Rows {
		drops, inserts = drops+r.Total.Drops, inserts+r.Total.Inserts
	}
	if drops+s.Other.Total.Drops != 5 || inserts+s.Other.Total.Inserts != 2 {
		t.Fatalf("rows %+v other %+v: counts lost", s.Rows, s.Other)
	}
}

func TestSortByInsertsAndHeldAndNetnsFilter(t *testing.T) {
	k := newFakeKernel()
	start := time.Unix(0, 0)
	k.add(1, "10.0.0.1/32", event.ReasonTableFull, 50, true)
	k.add(1, "10.0.0.2/32", event.ReasonInsert, 40, true)
	k.add(2, "10.0.0.3/32", event.ReasonInsert, 80, true)
	k.add(1, "10.0.0.2/32", event.ReasonDelete, 30, true)
	for _, tc := range []struct {
		opts  Options
		first string
		rows  int
	}{
		{Options{Sort: SortInserts, Limit: 10}, "10.0.0.3/32", 3},
		{Options{Sort: SortHeld, Limit: 10, Netns: map[uint32]bool{1: true}}, "10.0.0.2/32", 2},
		{Options{Sort: SortDrops, Limit: 10, Netns: map[uint32]bool{2: true}}, "10.0.0.3/32", 1},
	} {
		a := New(tc.opts, start)
		a.Seed(Key{Netns: 1, Prefix: netip.MustParsePrefix("10.0.0.1/32")}, 5)
		s, err := a.Snapshot(start.Add(time.Second), k.each, k.totalsNow, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(s.Rows) != tc.rows || s.Rows[0].Prefix.String() != tc.first {
			t.Errorf("%+v: rows %+v, want %d rows starting with %s", tc.opts, s.Rows, tc.rows, tc.first)
		}
	}
}

// BenchmarkSnapshot measures one refresh as the number of distinct sources
// the kernel tracks grows (bounded in practice by --max-sources).
func BenchmarkSnapshot(b *testing.B) {
	for _, n := range []int{1, 100, 10000, 100000, 1000000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			k := newFakeKernel()
			for i := 0; i < n; i++ {
				a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
				k.add(1, netip.PrefixFrom(a, 32).String(), event.ReasonTableFull, uint64(1+i%7), true)
			}
			a := New(Options{Sort: SortDrops, Limit: 20, Capacity: n}, time.Unix(0, 0))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := a.Snapshot(time.Unix(int64(i+1), 0), k.each, k.totalsNow, nil); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/source")
		})
	}
}
