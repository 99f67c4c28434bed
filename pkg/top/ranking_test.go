package top

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
)

// fakeKernel stands for the kernel's per-source map and its per-namespace
// totals (Kernel), and for the rest of a live session (LiveKernel). Like
// the probes, it counts by a namespace's identity, and Forget drops what it
// keeps of the namespaces it is told died.
type fakeKernel struct {
	sources map[Key]*event.SourceCounts
	perNs   map[event.Netns]event.NamespaceCounts
	// forgot is what Forget was told, call by call (nil for a call with
	// none); forgetErr is what it returns.
	forgot    [][]event.Netns
	forgetErr error
}

func newFakeKernel() *fakeKernel {
	return &fakeKernel{sources: map[Key]*event.SourceCounts{}, perNs: map[event.Netns]event.NamespaceCounts{}}
}

func newRanking(t testing.TB, opts Options, start time.Time) *Ranking {
	t.Helper()
	a, err := NewRanking(opts, start)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// add records n events of reason r from src in the namespace of that inode
// (known by its inode alone, event.NetnsOf); tracked=false models a source
// the LRU map has pushed out (only the namespace's totals see it).
func (k *fakeKernel) add(netns uint32, src string, r event.Reason, n uint64, tracked bool) {
	k.addIn(event.NetnsOf(netns), src, r, n, tracked)
}

// addIn is add in the namespace of that identity.
func (k *fakeKernel) addIn(netns event.Netns, src string, r event.Reason, n uint64, tracked bool) {
	ns := k.perNs[netns]
	ns.Events.Add(r, n)
	k.perNs[netns] = ns
	if !tracked {
		return
	}
	key := Key{Netns: netns, Prefix: netip.MustParsePrefix(src)}
	st := k.sources[key]
	if st == nil {
		st = &event.SourceCounts{Netns: netns, Prefix: key.Prefix}
		k.sources[key] = st
	}
	st.Events.Add(r, n)
}

// forget models the LRU map pushing src out.
func (k *fakeKernel) forget(netns uint32, src string) {
	delete(k.sources, Key{Netns: event.NetnsOf(netns), Prefix: netip.MustParsePrefix(src)})
}

func (k *fakeKernel) Sources(fn func(*event.SourceCounts) error) error {
	for _, st := range k.sources {
		if err := fn(st); err != nil {
			return err
		}
	}
	return nil
}

func (k *fakeKernel) NamespaceCounts() (map[event.Netns]event.NamespaceCounts, error) {
	return maps.Clone(k.perNs), nil
}

// Forget records what it was told and, as the probes do, drops the dead
// namespaces' counts and sources.
func (k *fakeKernel) Forget(dead []event.Netns) error {
	k.forgot = append(k.forgot, slices.Clone(dead))
	for _, ns := range dead {
		delete(k.perNs, ns)
		for key := range k.sources {
			if key.Netns == ns {
				delete(k.sources, key)
			}
		}
	}
	return k.forgetErr
}

func (k *fakeKernel) Backend() string                { return "fake" }
func (k *fakeKernel) Sees(event.Reason) bool         { return true }
func (k *fakeKernel) SourceSampling() (uint32, bool) { return 0, false }
func (k *fakeKernel) Lost() (uint64, error)          { return 0, nil }

var _ LiveKernel = (*fakeKernel)(nil)

func TestRowsPlusOtherEqualKernelTotals(t *testing.T) {
	k := newFakeKernel()
	start := time.Unix(1000, 0)
	a := newRanking(t, Options{Sort: SortDrops, Limit: 2, Capacity: 10}, start)
	k.add(1, "10.0.0.1/32", event.ReasonTableFull, 50, true)
	k.add(1, "10.0.0.2/32", event.ReasonTableFull, 30, true)
	k.add(1, "10.0.0.3/32", event.ReasonInsertFailed, 5, true)
	k.add(1, "10.0.0.4/32", event.ReasonTableFull, 7, false) // pushed out
	k.add(1, "10.0.0.1/32", event.ReasonInsert, 9, true)
	s, err := a.Snapshot(start.Add(2*time.Second), k, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Rows) != 2 || s.Rows[0].Prefix.String() != "10.0.0.1/32" || s.Rows[1].Prefix.String() != "10.0.0.2/32" {
		t.Fatalf("rows %+v, want 10.0.0.1 then 10.0.0.2", s.Rows)
	}
	if PerSec(s.Rows[0].Rate.Drops(), s.Interval) != 25 || s.Rows[0].Total.Held != 9 {
		t.Errorf("first row: %.1f drops/s, held %d; want 25 and 9", PerSec(s.Rows[0].Rate.Drops(), s.Interval), s.Rows[0].Total.Held)
	}
	var drops, inserts uint64
	for _, r := range s.Rows {
		drops += r.Total.Drops()
		inserts += r.Total.Inserts()
	}
	if drops+s.Other.Total.Drops() != 92 || inserts+s.Other.Total.Inserts() != 9 {
		t.Errorf("rows + other: %d drops, %d inserts; kernel 92 and 9", drops+s.Other.Total.Drops(), inserts+s.Other.Total.Inserts())
	}
	if s.Other.Total.Drops() != 12 {
		t.Errorf("other has %d drops, want 12 (10.0.0.3 past the limit, 10.0.0.4 untracked)", s.Other.Total.Drops())
	}

	// Next interval: rates are this interval's; a source that vanished from
	// the kernel map means the bound is in effect.
	k.add(1, "10.0.0.2/32", event.ReasonTableFull, 100, true)
	k.forget(1, "10.0.0.3/32")
	s, err = a.Snapshot(start.Add(3*time.Second), k, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.Rows[0].Prefix.String() != "10.0.0.2/32" || s.Rows[0].Rate.Drops() != 100 || s.Rows[1].Rate.Drops() != 0 {
		t.Fatalf("second interval rows %+v", s.Rows)
	}
	if !s.Bounded {
		t.Error("a source left the kernel map but the view does not say the bound is in effect")
	}
}

// A limit a namespace keeps each namespace's best rows, a small
// namespace's too, ranked together; the rows left out are in other, and
// rows + other still add up to the kernel's totals.
func TestPerNetnsLimitKeepsEachNamespacesBest(t *testing.T) {
	k := newFakeKernel()
	start := time.Unix(1000, 0)
	a := newRanking(t, Options{Sort: SortDrops, Limit: 100, PerNetns: 2}, start)
	for i, n := range []uint64{90, 80, 70, 60} {
		k.add(1, fmt.Sprintf("10.0.0.%d/32", i+1), event.ReasonTableFull, n, true)
	}
	k.add(2, "10.0.1.1/32", event.ReasonTableFull, 3, true)
	s, err := a.Snapshot(start.Add(time.Second), k, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	var drops uint64
	for _, r := range s.Rows {
		got = append(got, fmt.Sprintf("%d %s %d", r.Netns.Inode, r.Prefix, r.Total.Drops()))
		drops += r.Total.Drops()
	}
	want := []string{"1 10.0.0.1/32 90", "1 10.0.0.2/32 80", "2 10.0.1.1/32 3"}
	if !slices.Equal(got, want) {
		t.Errorf("rows %q, want %q", got, want)
	}
	if drops+s.Other.Total.Drops() != 303 || s.Other.Total.Drops() != 130 {
		t.Errorf("rows %d + other %d drops, want 173 + 130 = 303", drops, s.Other.Total.Drops())
	}
}

// A source pushed out of the kernel's LRU map comes back counting from
// zero: its rate is what it counted since, not a wrapped difference.
func TestSourceBackInTheMapHasASaneRate(t *testing.T) {
	k := newFakeKernel()
	start := time.Unix(0, 0)
	a := newRanking(t, Options{Sort: SortDrops, Limit: 5}, start)
	k.add(1, "10.0.0.1/32", event.ReasonTableFull, 100, true)
	if _, err := a.Snapshot(start.Add(time.Second), k, nil); err != nil {
		t.Fatal(err)
	}
	st := k.sources[Key{Netns: event.NetnsOf(1), Prefix: netip.MustParsePrefix("10.0.0.1/32")}]
	st.Events = event.Counts{}
	st.Events.Add(event.ReasonTableFull, 3)
	ns := k.perNs[event.NetnsOf(1)]
	ns.Events.Add(event.ReasonTableFull, 3)
	k.perNs[event.NetnsOf(1)] = ns
	s, err := a.Snapshot(start.Add(2*time.Second), k, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.Rows[0].Rate.Drops() != 3 || s.Other.Rate.Drops() > 100 {
		t.Fatalf("rate after re-entry %d (other %d), want 3", s.Rows[0].Rate.Drops(), s.Other.Rate.Drops())
	}
}

// A row that only holds seeded entries can push a counted source off the
// list; that source's counts must then be in Other.
func TestPushedOffRowsKeepTheirCountsInOther(t *testing.T) {
	k := newFakeKernel()
	start := time.Unix(0, 0)
	a := newRanking(t, Options{Sort: SortHeld, Limit: 1}, start)
	a.seed(Key{Netns: event.NetnsOf(1), Prefix: netip.MustParsePrefix("10.0.0.1/32")}, 3)
	k.add(1, "10.0.0.2/32", event.ReasonInsert, 2, true)
	k.add(1, "10.0.0.2/32", event.ReasonTableFull, 5, true)
	s, err := a.Snapshot(start.Add(time.Second), k, nil)
	if err != nil {
		t.Fatal(err)
	}
	var drops, inserts uint64
	for _, r := range s.Rows {
		drops, inserts = drops+r.Total.Drops(), inserts+r.Total.Inserts()
	}
	if drops+s.Other.Total.Drops() != 5 || inserts+s.Other.Total.Inserts() != 2 {
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
		a := newRanking(t, tc.opts, start)
		a.seed(Key{Netns: event.NetnsOf(1), Prefix: netip.MustParsePrefix("10.0.0.1/32")}, 5)
		s, err := a.Snapshot(start.Add(time.Second), k, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(s.Rows) != tc.rows || s.Rows[0].Prefix.String() != tc.first || s.Sort != tc.opts.Sort {
			t.Errorf("%+v: rows %+v sorted by %q, want %d rows starting with %s", tc.opts, s.Rows, s.Sort, tc.rows, tc.first)
		}
	}
}

// The scenario of a spoofed flood mixed with real offenders: five sources
// are refused 600 times each in a burst and go quiet; then, read after
// read, the kernel's map turns over to fresh spoofed sources refused 3
// times each (65,000 of them) and pushes the five out. The history keeps
// them: they stay the first five rows, with their exact counts.
func TestQuietHeavySourcesOutrankASpoofedFlood(t *testing.T) {
	k := newFakeKernel()
	start := time.Unix(0, 0)
	a := newRanking(t, Options{Sort: SortDrops, Limit: 10, Capacity: 65536}, start)
	heavy := []string{"192.0.2.1/32", "192.0.2.2/32", "192.0.2.3/32", "192.0.2.4/32", "192.0.2.5/32"}
	for _, h := range heavy {
		k.add(1, h, event.ReasonTableFull, 600, true)
	}
	snapAt := func(sec int) Snapshot {
		s, err := a.Snapshot(start.Add(time.Duration(sec)*time.Second), k, nil)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	snapAt(1)
	for _, h := range heavy {
		k.forget(1, h)
	}
	const spoofed, perRead = 65000, 13000
	for i := 0; i < spoofed; i++ {
		src := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), 32).String()
		k.add(1, src, event.ReasonTableFull, 3, true)
		if (i+1)%perRead == 0 {
			snapAt(2 + i/perRead)
			clear(k.sources) // the LRU map has turned over
		}
	}
	// The last interval still brings spoofed sources: what they do now
	// must not outrank what the five did before.
	for i := 0; i < 100; i++ {
		k.add(1, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 200, 0, byte(i)}), 32).String(), event.ReasonTableFull, 3, true)
	}
	s := snapAt(100)
	var rowDrops uint64
	for i, r := range s.Rows {
		if i < len(heavy) && (!slices.Contains(heavy, r.Prefix.String()) || r.Total.Drops() != 600 || r.Err != 0) {
			t.Errorf("row %d: %s with %d drops (err %d), want a heavy source with exactly 600", i, r.Prefix, r.Total.Drops(), r.Err)
		}
		rowDrops += r.Total.Drops()
	}
	if want := uint64(5*600 + spoofed*3 + 300); rowDrops+s.Other.Total.Drops() != want {
		t.Errorf("rows %d + other %d != kernel total %d", rowDrops, s.Other.Total.Drops(), want)
	}
}

// The namespace line is the kernel's own per-namespace total, not the sum
// of the sources its map still holds: under a flood past the bound most
// drops belong to sources it no longer holds.
func TestNamespaceLineIsTheKernelsTotal(t *testing.T) {
	k := newFakeKernel()
	start := time.Unix(0, 0)
	a := newRanking(t, Options{Sort: SortDrops, Limit: 3, Capacity: 2}, start)
	k.add(7, "10.0.0.1/32", event.ReasonTableFull, 10, true)
	k.add(7, "10.0.0.2/32", event.ReasonTableFull, 1000, false) // never held
	k.add(8, "10.0.0.3/32", event.ReasonTableFull, 5, true)
	// The tables list both namespaces; 8's statistics could not be read.
	tables := map[uint32]Namespace{
		7: {Netns: event.NetnsOf(7), Entries: 50, Max: 50},
		8: {Netns: event.NetnsOf(8), Entries: -1},
	}
	s, err := a.Snapshot(start.Add(time.Second), k, tables)
	if err != nil {
		t.Fatal(err)
	}
	k.add(7, "10.0.0.4/32", event.ReasonTableFull, 500, false)
	s, err = a.Snapshot(start.Add(3*time.Second), k, tables)
	if err != nil {
		t.Fatal(err)
	}
	got := map[uint32]Namespace{}
	for _, ns := range s.Namespaces {
		got[ns.Netns.Inode] = ns
	}
	if ns := got[7]; ns.Total.Drops() != 1510 || PerSec(ns.Rate.Drops(), s.Interval) != 250 || ns.Entries != 50 || ns.Max != 50 || ns.Netns != event.NetnsOf(7) {
		t.Errorf("netns 7: %d drops, %.0f/s, %d entries of %d (%+v); want 1510, 250/s (500 in 2 s), 50 of 50", ns.Total.Drops(), PerSec(ns.Rate.Drops(), s.Interval), ns.Entries, ns.Max, ns.Netns)
	}
	if ns := got[8]; ns.Total.Drops() != 5 || ns.Entries != -1 || ns.Netns != event.NetnsOf(8) {
		t.Errorf("netns 8 (no statistics read): %d drops, %d entries (%+v); want 5 and -1", ns.Total.Drops(), ns.Entries, ns.Netns)
	}
	if len(s.Namespaces) != 2 {
		t.Errorf("namespaces %+v, want 7 and 8", s.Namespaces)
	}
}

// Rows and namespace lines count each reason apart: the kernel's
// early_drop counter leaves the gc worker's evictions out, so a view
// comparing with `conntrack -S` needs them apart, and Evicted sums them.
// Entries held are inserts less deletes and evictions of both kinds.
func TestEvictionsCountApartInRowsAndNamespaces(t *testing.T) {
	k := newFakeKernel()
	start := time.Unix(0, 0)
	a := newRanking(t, Options{Sort: SortHeld, Limit: 5}, start)
	k.add(3, "10.0.0.1/32", event.ReasonInsert, 10, true)
	k.add(3, "10.0.0.1/32", event.ReasonEarlyDrop, 3, true)
	k.add(3, "10.0.0.1/32", event.ReasonGCEvict, 2, true)
	k.add(3, "10.0.0.1/32", event.ReasonDelete, 1, true)
	k.add(3, "10.0.0.2/32", event.ReasonGCEvict, 4, false) // pushed out
	s, err := a.Snapshot(start.Add(time.Second), k, nil)
	if err != nil {
		t.Fatal(err)
	}
	if s.Sort != SortHeld {
		t.Errorf("snapshot sorted by %q, want the options' %q", s.Sort, SortHeld)
	}
	if len(s.Rows) != 1 {
		t.Fatalf("rows %+v, want 10.0.0.1 only", s.Rows)
	}
	r := s.Rows[0]
	if c := r.Total; c.EarlyDrops() != 3 || c.GCEvicted() != 2 || c.Evicted() != 5 || c.Deletes() != 1 || c.Inserts() != 10 || c.Held != 4 || c.Drops() != 0 {
		t.Errorf("row: early drops %d, gc %d, evicted %d, deletes %d, inserts %d, held %d, drops %d; want 3, 2, 5, 1, 10, 4, 0",
			c.EarlyDrops(), c.GCEvicted(), c.Evicted(), c.Deletes(), c.Inserts(), c.Held, c.Drops())
	}
	if c := r.Rate; c.EarlyDrops() != 3 || c.GCEvicted() != 2 {
		t.Errorf("row rate: early drops %d, gc %d; want 3 and 2", c.EarlyDrops(), c.GCEvicted())
	}
	if o := s.Other.Total; o.GCEvicted() != 4 || o.EarlyDrops() != 0 || o.Held != -4 {
		t.Errorf("other: gc %d, early drops %d, held %d; want 4, 0, -4 (10 in, 10 out, 4 held by the row)", o.GCEvicted(), o.EarlyDrops(), o.Held)
	}
	if len(s.Namespaces) != 1 {
		t.Fatalf("namespaces %+v", s.Namespaces)
	}
	if ns := s.Namespaces[0]; ns.Total.EarlyDrops() != 3 || ns.Total.GCEvicted() != 6 || ns.Total.Evicted() != 9 || ns.Rate.GCEvicted() != 6 {
		t.Errorf("netns 3: early drops %d, gc %d, evicted %d (gc rate %d); want 3, 6, 9 (6)",
			ns.Total.EarlyDrops(), ns.Total.GCEvicted(), ns.Total.Evicted(), ns.Rate.GCEvicted())
	}
}

func TestNewRankingRejectsAGroupingNoFamilyHas(t *testing.T) {
	if _, err := NewRanking(Options{Grouping: Grouping{V4Bits: 33}}, time.Unix(0, 0)); err == nil {
		t.Error("a /33 IPv4 grouping was accepted")
	}
	if _, err := NewRanking(DefaultOptions(), time.Unix(0, 0)); err != nil {
		t.Errorf("the default options: %v", err)
	}
}

func TestParseSortBy(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want SortBy
		ok   bool
	}{
		{"drops", SortDrops, true},
		{"inserts", SortInserts, true},
		{"held", SortHeld, true},
		{"", "", false},
		{"drop", "", false},
		{"evictions", "", false},
		{" held", "", false},
	} {
		if got, ok := ParseSortBy(tc.in); got != tc.want || ok != tc.ok {
			t.Errorf("ParseSortBy(%q) = %q, %v; want %q, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

// DefaultOptions are top-sources' flags' defaults (and `status --watch`'s):
// changing one changes what operators see.
func TestDefaultOptions(t *testing.T) {
	o := DefaultOptions()
	if o.Sort != SortDrops || o.Limit != 20 || o.Capacity != 65536 || o.Grouping != DefaultGrouping ||
		o.Interval != time.Second || o.Once || len(o.Netns) != 0 {
		t.Errorf("DefaultOptions() = %+v", o)
	}
	if DefaultGrouping != (Grouping{V4Bits: 32, V6Bits: 128}) {
		t.Errorf("DefaultGrouping = %+v, want one row per address", DefaultGrouping)
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
			a := newRanking(b, Options{Sort: SortDrops, Limit: 20, Capacity: n}, time.Unix(0, 0))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := a.Snapshot(time.Unix(int64(i+1), 0), k, nil); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/source")
		})
	}
}
