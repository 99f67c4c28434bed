package top

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
)

const testNetns = 4026531840

// flowFrom builds an event of reason r from src (an address) in netns.
func flowFrom(r event.Reason, netns uint32, src netip.Addr) *event.Event {
	fam := event.FamilyIPv4
	dst := netip.MustParseAddr("192.0.2.1")
	if src.Is6() {
		fam, dst = event.FamilyIPv6, netip.MustParseAddr("2001:db8::1")
	}
	return &event.Event{
		Time:   time.Unix(1700000000, 0),
		Reason: r,
		Netns:  event.NetnsOf(netns),
		Flow: event.Tuple{Family: fam, Proto: event.ProtoUDP,
			Src: netip.AddrPortFrom(src, 40000), Dst: netip.AddrPortFrom(dst, 53)},
	}
}

func from(r event.Reason, src string) *event.Event {
	return flowFrom(r, testNetns, netip.MustParseAddr(src))
}

func newHistory(t testing.TB, capacity int, g Grouping) *History {
	t.Helper()
	h, err := NewHistory(capacity, g)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func key(netns uint32, prefix string) Key {
	return Key{Netns: event.NetnsOf(netns), Prefix: netip.MustParsePrefix(prefix)}
}

// model is the truth the history approximates: exact counts for every
// key, with no bound.
type model struct {
	keys   map[Key]*Counts
	totals Counts
	// active says a key has done something weighed (a refusal, an insert,
	// entries held): from then on it has a row while rows are free.
	active map[Key]bool
}

func newModel() *model { return &model{keys: map[Key]*Counts{}, active: map[Key]bool{}} }

func (m *model) of(k Key) *Counts {
	c := m.keys[k]
	if c == nil {
		c = &Counts{}
		m.keys[k] = c
	}
	return c
}

// add counts one event of reason r, each reason apart (early_drop and
// gc_evict too), and the entries it adds or removes.
func (m *model) add(k Key, r event.Reason) {
	for _, c := range []*Counts{m.of(k), &m.totals} {
		c.Events.Add(r, 1)
		switch r {
		case event.ReasonInsert:
			c.Held++
		case event.ReasonDelete, event.ReasonEarlyDrop, event.ReasonGCEvict:
			c.Held--
		}
	}
	if r.IsDrop() || r == event.ReasonInsert {
		m.active[k] = true
	}
}

func (m *model) addHeld(k Key, n int64) {
	m.of(k).Held += n
	m.totals.Held += n
	if n > 0 {
		m.active[k] = true
	}
}

// removes reports whether an event of reason r takes an entry away.
func removes(r event.Reason) bool {
	return r == event.ReasonDelete || r == event.ReasonEarlyDrop || r == event.ReasonGCEvict
}

// checkStructure verifies the heap, the positions and the index against
// the rows.
func checkStructure(t *testing.T, tr *History) {
	t.Helper()
	if len(tr.rows) > tr.capacity || len(tr.heap) != len(tr.rows) {
		t.Fatalf("%d rows, %d in heap, capacity %d", len(tr.rows), len(tr.heap), tr.capacity)
	}
	for p, i := range tr.heap {
		if int(tr.rows[i].pos) != p {
			t.Fatalf("row %d at heap %d says %d", i, p, tr.rows[i].pos)
		}
		if p > 0 && tr.rows[tr.heap[(p-1)/2]].weight > tr.rows[i].weight {
			t.Fatalf("heap order broken at %d", p)
		}
	}
	// The rows Forget freed are the ones in gone, each once, and are out
	// of the index: only the others are found, each at its own row.
	gone := map[int32]bool{}
	for _, i := range tr.gone {
		if i < 0 || int(i) >= len(tr.rows) || gone[i] || !tr.rows[i].forgotten {
			t.Fatalf("gone %v: row %d is not a forgotten row, or listed twice", tr.gone, i)
		}
		gone[i] = true
	}
	live := 0
	for i := range tr.rows {
		if tr.rows[i].forgotten != gone[int32(i)] {
			t.Fatalf("row %d forgotten %v, in gone %v", i, tr.rows[i].forgotten, gone[int32(i)])
		}
		if !tr.rows[i].forgotten {
			live++
		} else if tr.rows[i].weight != ^uint64(0) || tr.rows[i].tally != (tally{}) {
			t.Fatalf("forgotten row %d weighs %d with %+v: it must sink under every live row, counting nothing", i, tr.rows[i].weight, tr.rows[i].tally)
		}
	}
	used := 0
	for _, s := range tr.index.slots {
		if s.ref != 0 {
			used++
			if tr.rows[s.ref-1].forgotten {
				t.Fatalf("the index leads to forgotten row %d", s.ref-1)
			}
		}
	}
	if used != live {
		t.Fatalf("index holds %d keys, %d live rows (%d in all)", used, live, len(tr.rows))
	}
	for i := range tr.rows {
		j, ok := tr.index.find(tr.rows[i].key, tr.rows)
		if tr.rows[i].forgotten {
			if ok && int(j) == i {
				t.Fatalf("forgotten row %d (%v) still found", i, tr.rows[i].key)
			}
			continue
		}
		if !ok || int(j) != i {
			t.Fatalf("row %d (%v) found at %d, %v", i, tr.rows[i].key, j, ok)
		}
	}
}

// checkSums verifies that the rows and "other" add up to the totals, in
// every column, over all time and over the interval.
func checkSums(t *testing.T, s Tally) {
	t.Helper()
	var all, interval Counts
	for _, r := range s.Rows {
		all.add(r.Total)
		interval.add(r.Rate)
	}
	all.add(s.Other.Total)
	interval.add(s.Other.Rate)
	if all != s.Totals.Total {
		t.Fatalf("rows + other = %+v, totals %+v", all, s.Totals.Total)
	}
	if interval != s.Totals.Rate {
		t.Fatalf("interval: rows + other = %+v, totals %+v", interval, s.Totals.Rate)
	}
	if s.Tracked != len(s.Rows) {
		t.Fatalf("tracked %d, %d rows", s.Tracked, len(s.Rows))
	}
}

// checkBounds verifies each row against the truth: weighed reasons
// (refusals, inserts) within Err, the others (evictions, each kind apart,
// deletes, clashes resolved) lower bounds, everything exact when Err is 0.
func checkBounds(t *testing.T, s Tally, m *model) (bounded int) {
	t.Helper()
	for _, r := range s.Rows {
		truth := *m.keys[r.Key]
		if r.Err == 0 {
			if r.Total != truth {
				t.Fatalf("%v: Err 0 but %+v, truth %+v", r.Key, r.Total, truth)
			}
			continue
		}
		for _, reason := range event.Reasons() {
			got, want := r.Total.Events.Of(reason), truth.Events.Of(reason)
			if reason.IsDrop() || reason == event.ReasonInsert {
				if got > want || want > got+r.Err {
					t.Fatalf("%v: %s %d, truth %d, err %d", r.Key, reason, got, want, r.Err)
				}
			} else if got > want {
				t.Fatalf("%v: %s %d over the truth %d", r.Key, reason, got, want)
			}
		}
		if r.Total.Held < 0 || r.Total.Held > truth.Held {
			t.Fatalf("%v: held %d, truth %d", r.Key, r.Total.Held, truth.Held)
		}
		bounded++
	}
	return bounded
}

func TestExactWhileSourcesFit(t *testing.T) {
	tr := newHistory(t, 64, Grouping{})
	m := newModel()
	rng := rand.New(rand.NewPCG(1, 2))
	reasons := event.Reasons()
	for range 20000 {
		src := netip.AddrFrom4([4]byte{10, 0, 0, byte(rng.IntN(64))})
		ev := flowFrom(reasons[rng.IntN(len(reasons))], testNetns, src)
		k := DefaultGrouping.KeyOf(ev)
		if removes(ev.Reason) && m.of(k).Held == 0 {
			continue // an entry must exist to go
		}
		if ev.Reason == event.ReasonClashResolved && !m.active[k] {
			continue // a clash comes after the source did something
		}
		add(tr, ev)
		m.add(k, ev.Reason)
	}
	checkStructure(t, tr)
	s := tr.Read()
	checkSums(t, s)
	if s.Tracked != 64 || s.Evictions != 0 || s.Bounded() || s.Other.Total != (Counts{}) {
		t.Errorf("tracked %d, evictions %d, other %+v", s.Tracked, s.Evictions, s.Other.Total)
	}
	for _, r := range s.Rows {
		if r.Err != 0 || r.Total != *m.keys[r.Key] {
			t.Errorf("%v: %+v err %d, want %+v exactly", r.Key, r.Total, r.Err, *m.keys[r.Key])
		}
	}
	if s.Totals.Total != m.totals {
		t.Errorf("totals %+v, want %+v", s.Totals.Total, m.totals)
	}
	// Every reason was drawn, so every column was compared above: early
	// drops and the gc's evictions apart.
	for _, r := range reasons {
		if m.totals.Events.Of(r) == 0 {
			t.Errorf("no %s event in the stream: its column went unchecked", r)
		}
	}
}

// TestOtherMakesTotalsAddUp runs random streams with many more sources
// than rows and checks, at every reading, that nothing was lost or counted
// twice and that every row is within its bounds.
func TestOtherMakesTotalsAddUp(t *testing.T) {
	bounded := 0
	defer func() {
		if bounded == 0 && !t.Failed() {
			t.Error("no row with a nonzero Err was ever checked")
		}
	}()
	for seed := range uint64(40) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 99))
			capacity := 1 + rng.IntN(40)
			sources := capacity + 1 + rng.IntN(400)
			tr := newHistory(t, capacity, Grouping{})
			m := newModel()
			reasons := event.Reasons()
			for step := range 5000 {
				// Skewed: low-numbered sources are far more frequent, as in
				// a flood where a few sources do most of the work.
				n := int(float64(sources) * rng.Float64() * rng.Float64())
				src := netip.AddrFrom4([4]byte{10, byte(n >> 16), byte(n >> 8), byte(n)})
				netns := uint32(testNetns + rng.IntN(2))
				ev := flowFrom(reasons[rng.IntN(len(reasons))], netns, src)
				if rng.IntN(50) == 0 {
					ev.Flow = event.Tuple{} // no flow: only "other" can count it
				}
				k := DefaultGrouping.KeyOf(ev)
				switch {
				case rng.IntN(100) == 0:
					h := int64(1 + rng.IntN(5))
					tr.AddHeld(k, h)
					m.addHeld(k, h)
				case removes(ev.Reason) && m.of(k).Held <= 0:
				case ev.Reason == event.ReasonClashResolved && !m.active[k]:
				default:
					add(tr, ev)
					m.add(k, ev.Reason)
				}
				if step%500 == 499 {
					checkStructure(t, tr)
					s := tr.Read()
					checkSums(t, s)
					bounded += checkBounds(t, s, m)
					if s.Totals.Total != m.totals {
						t.Fatalf("totals %+v, want %+v", s.Totals.Total, m.totals)
					}
				}
			}
			if s := tr.Read(); !s.Bounded() || s.Tracked != capacity {
				t.Errorf("tracked %d of %d with %d evictions: the bound never bit", s.Tracked, capacity, s.Evictions)
			}
		})
	}
}

// TestHeavySourcesRankFirstInFlood: five sources each send a tenth of the
// traffic, a million spoofed ones the other half; a thousand rows must
// find the five, rank them first and count them within their bound, also
// when the five start only after the flood has taken every row.
func TestHeavySourcesRankFirstInFlood(t *testing.T) {
	flood := 1_000_000
	if testing.Short() {
		flood = 100_000
	}
	t.Run("from the start", func(t *testing.T) { heavyInFlood(t, flood, 0) })
	t.Run("after the flood", func(t *testing.T) { heavyInFlood(t, flood, flood/5) })
}

// heavyInFlood sends flood single events from random sources, the first
// head of them alone, the rest mixed evenly with five heavy sources.
func heavyInFlood(t *testing.T, flood, head int) {
	tr := newHistory(t, 1000, Grouping{})
	heavy := []netip.Addr{}
	truth := map[Key]uint64{}
	for i := range 5 {
		a := netip.AddrFrom4([4]byte{203, 0, 113, byte(i + 1)})
		heavy = append(heavy, a)
		truth[DefaultGrouping.KeyFor(event.NetnsOf(testNetns), a)] = 0
	}
	rng := rand.New(rand.NewPCG(7, 7))
	ev := flowFrom(event.ReasonTableFull, testNetns, heavy[0])
	for sent := 0; sent < flood; {
		if i := rng.IntN(10); i < 5 && sent >= head {
			ev.Flow.Src = netip.AddrPortFrom(heavy[i], 1)
			truth[DefaultGrouping.KeyFor(event.NetnsOf(testNetns), heavy[i])]++
		} else {
			ev.Flow.Src = netip.AddrPortFrom(netip.AddrFrom4([4]byte{byte(1 + rng.IntN(200)), byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32())}), 1)
			sent++
		}
		add(tr, ev)
	}
	checkStructure(t, tr)
	s := tr.Read()
	s.Rows = topRows(s.Rows, Counts.Drops, 5)
	if !s.Bounded() || s.Tracked != 1000 {
		t.Errorf("tracked %d, evictions %d: the flood should have filled the rows", s.Tracked, s.Evictions)
	}
	bound := s.Totals.Total.Drops() / uint64(s.Capacity)
	for _, r := range s.Rows {
		drops := r.Total.Drops()
		want, ok := truth[r.Key]
		if !ok {
			t.Errorf("%v ranked in the top 5 with %d drops, err %d: not a heavy source", r.Key, drops, r.Err)
			continue
		}
		if drops > want || want > drops+r.Err || r.Err > bound {
			t.Errorf("%v: %d drops (err %d, at most %d), truth %d", r.Key, drops, r.Err, bound, want)
		}
		if head > 0 && r.Err == 0 {
			t.Errorf("%v: err 0 although every row was taken before it came", r.Key)
		}
		t.Logf("%v: counted %d of %d drops, err %d (N/k = %d)", r.Prefix, drops, want, r.Err, bound)
	}
	if len(s.Rows) != 5 {
		t.Errorf("%d rows, want 5", len(s.Rows))
	}
	var rest uint64
	for _, r := range tr.Read().Rows {
		rest += r.Total.Drops()
	}
	if rest+s.Other.Total.Drops() != s.Totals.Total.Drops() || s.Totals.Total.Drops() != uint64(flood)+truthSum(truth) {
		t.Errorf("rows %d + other %d, totals %d, sent %d", rest, s.Other.Total.Drops(), s.Totals.Total.Drops(), uint64(flood)+truthSum(truth))
	}
}

func truthSum(m map[Key]uint64) (n uint64) {
	for _, v := range m {
		n += v
	}
	return n
}

func TestGroupingByPrefix(t *testing.T) {
	g := Grouping{V4Bits: 24, V6Bits: 64}
	tests := []struct {
		netns uint32
		src   string
		want  Key
	}{
		{1, "10.1.2.3", key(1, "10.1.2.0/24")},
		{1, "10.1.2.200", key(1, "10.1.2.0/24")},
		{1, "::ffff:10.1.2.9", key(1, "10.1.2.0/24")},
		{2, "10.1.2.3", key(2, "10.1.2.0/24")},
		{1, "10.1.3.3", key(1, "10.1.3.0/24")},
		{1, "2001:db8:1:2::5", key(1, "2001:db8:1:2::/64")},
		{1, "2001:db8:1:2:ffff::1", key(1, "2001:db8:1:2::/64")},
		{1, "fe80::1%eth0", key(1, "fe80::/64")},
		{1, "2001:db8:1:3::5", key(1, "2001:db8:1:3::/64")},
	}
	for _, tt := range tests {
		if got := g.KeyFor(event.NetnsOf(tt.netns), netip.MustParseAddr(tt.src)); got != tt.want {
			t.Errorf("KeyFor(%d, %s) = %v, want %v", tt.netns, tt.src, got, tt.want)
		}
	}
	if got := (Grouping{}).KeyFor(event.NetnsOf(1), netip.MustParseAddr("::ffff:10.1.2.9")); got != key(1, "10.1.2.9/32") {
		t.Errorf("default grouping: %v", got)
	}
	if got := (Grouping{}).KeyFor(event.NetnsOf(1), netip.MustParseAddr("2001:db8::7")); got != key(1, "2001:db8::7/128") {
		t.Errorf("default grouping: %v", got)
	}
	if got := g.KeyOf(&event.Event{Netns: event.NetnsOf(5), Reason: event.ReasonTableFull}); got.Valid() || got.Netns != event.NetnsOf(5) {
		t.Errorf("event without a flow: %v, want an invalid key", got)
	}

	tr := newHistory(t, 10, g)
	for _, tt := range tests {
		add(tr, flowFrom(event.ReasonTableFull, tt.netns, netip.MustParseAddr(tt.src)))
	}
	add(tr, &event.Event{Netns: event.NetnsOf(1), Reason: event.ReasonTableFull})
	s := tr.Read()
	got := map[Key]uint64{}
	for _, r := range s.Rows {
		got[r.Key] = r.Total.Events.Of(event.ReasonTableFull)
	}
	want := map[Key]uint64{
		key(1, "10.1.2.0/24"): 3, key(2, "10.1.2.0/24"): 1, key(1, "10.1.3.0/24"): 1,
		key(1, "2001:db8:1:2::/64"): 2, key(1, "fe80::/64"): 1, key(1, "2001:db8:1:3::/64"): 1,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("rows %v, want %v", got, want)
	}
	other, totals := s.Other.Total.Events.Of(event.ReasonTableFull), s.Totals.Total.Events.Of(event.ReasonTableFull)
	if other != 1 || totals != 10 {
		t.Errorf("other %d, totals %d; want 1 and 10", other, totals)
	}
}

func TestGroupingValidate(t *testing.T) {
	for _, g := range []Grouping{{}, {V4Bits: 1, V6Bits: 1}, {V4Bits: 32, V6Bits: 128}, {V4Bits: 24}} {
		if err := g.Validate(); err != nil {
			t.Errorf("%+v: %v", g, err)
		}
	}
	for _, g := range []Grouping{{V4Bits: 33}, {V6Bits: 129}, {V4Bits: -1}} {
		if _, err := NewHistory(10, g); err == nil {
			t.Errorf("%+v accepted", g)
		}
	}
	for _, c := range []int{0, -1, MaxHistoryCapacity + 1} {
		if _, err := NewHistory(c, Grouping{}); err == nil || !strings.Contains(err.Error(), "max sources") {
			t.Errorf("capacity %d: %v", c, err)
		}
	}
}

func TestIntervalCounts(t *testing.T) {
	tableFull := func(c Counts) uint64 { return c.Events.Of(event.ReasonTableFull) }
	tr := newHistory(t, 2, Grouping{})
	add(tr, from(event.ReasonTableFull, "10.0.0.1"))
	add(tr, from(event.ReasonTableFull, "10.0.0.1"))
	add(tr, from(event.ReasonInsert, "10.0.0.2"))
	first := tr.Read()
	if tableFull(first.Rows[0].Rate) != 2 || first.Rows[1].Rate.Inserts() != 1 || first.Interval <= 0 {
		t.Fatalf("first interval: %+v", first.Rows)
	}
	add(tr, from(event.ReasonTableFull, "10.0.0.1"))
	add(tr, from(event.ReasonDelete, "10.0.0.2"))
	// A third source displaces .2 (the lighter): its interval goes to
	// "other" with it, its earlier counts too, and the interval still adds up.
	add(tr, from(event.ReasonTableFull, "10.0.0.3"))
	s := tr.Read()
	checkSums(t, s)
	r := s.Rows[0]
	if r.Prefix.Addr().String() != "10.0.0.1" || tableFull(r.Total) != 3 || tableFull(r.Rate) != 1 {
		t.Errorf("10.0.0.1: %+v", r)
	}
	if s.Other.Total.Inserts() != 1 || s.Other.Rate.Inserts() != 0 || s.Other.Rate.Held != -1 || s.Other.Total.Held != 0 {
		t.Errorf("other: %+v interval %+v", s.Other.Total, s.Other.Rate)
	}
	if tableFull(s.Totals.Rate) != 2 || s.Totals.Rate.Held != -1 {
		t.Errorf("totals interval: %+v", s.Totals.Rate)
	}
	if s.Rows[1].Err != 1 || s.Evictions != 1 {
		t.Errorf("10.0.0.3: err %d, evictions %d; want 1 and 1", s.Rows[1].Err, s.Evictions)
	}
	if third := tr.Read(); third.Totals.Rate != (Counts{}) {
		t.Errorf("nothing happened, interval %+v", third.Totals.Rate)
	}
}

// TestHeldNeverBelowZero: a source that lost its row and came back does
// not know how many entries it held; deletes of those come out of "other".
func TestHeldNeverBelowZero(t *testing.T) {
	tr := newHistory(t, 1, Grouping{})
	for range 3 {
		add(tr, from(event.ReasonInsert, "10.0.0.1"))
	}
	for range 4 {
		add(tr, from(event.ReasonInsert, "10.0.0.2")) // takes the only row
	}
	for range 5 {
		add(tr, from(event.ReasonInsert, "10.0.0.1")) // takes it back, err 4
	}
	for range 4 {
		add(tr, from(event.ReasonDelete, "10.0.0.2")) // has no row: from other
	}
	for range 6 {
		add(tr, from(event.ReasonDelete, "10.0.0.1"))
	}
	s := tr.Read()
	checkSums(t, s)
	r := s.Rows[0]
	if r.Total.Held != 0 || s.Other.Total.Held != 2 || s.Totals.Total.Held != 2 {
		t.Errorf("held: row %d, other %d, totals %d; want 0, 2, 2", r.Total.Held, s.Other.Total.Held, s.Totals.Total.Held)
	}
	add(tr, from(event.ReasonEarlyDrop, "10.0.0.1"))
	add(tr, from(event.ReasonEarlyDrop, "10.0.0.9"))
	s = tr.Read()
	checkSums(t, s)
	if s.Rows[0].Total.EarlyDrops() != 1 || s.Other.Total.EarlyDrops() != 1 || s.Other.Total.Held != 0 || s.Rows[0].LastReason != event.ReasonEarlyDrop {
		t.Errorf("early drops: row %+v, other %+v", s.Rows[0], s.Other.Total)
	}
	if s.Tracked != 1 || s.Evictions != 2 {
		t.Errorf("an eviction victim must not take a row: tracked %d, evictions %d", s.Tracked, s.Evictions)
	}
}

// TestEarlyDropAndGCEvictCountApart: the two kinds of eviction are
// separate reasons (the kernel's early_drop counter leaves the gc's out),
// each taking an entry, neither a drop nor activity; Evicted is their sum.
func TestEarlyDropAndGCEvictCountApart(t *testing.T) {
	tr := newHistory(t, 10, Grouping{})
	for range 5 {
		add(tr, from(event.ReasonInsert, "10.0.0.1"))
	}
	add(tr, from(event.ReasonEarlyDrop, "10.0.0.1"))
	gc := from(event.ReasonGCEvict, "10.0.0.1")
	gc.Time = gc.Time.Add(time.Second)
	add(tr, gc)
	add(tr, gc)
	add(tr, from(event.ReasonGCEvict, "10.0.0.9")) // no row: "other"
	s := tr.Read()
	checkSums(t, s)
	if s.Tracked != 1 {
		t.Fatalf("tracked %d: an eviction victim must not take a row", s.Tracked)
	}
	r := s.Rows[0].Total
	if r.EarlyDrops() != 1 || r.GCEvicted() != 2 || r.Evicted() != 3 || r.Drops() != 0 || r.Held != 2 || r.Inserts() != 5 {
		t.Errorf("row: early drops %d, gc %d, evicted %d, drops %d, held %d, inserts %d; want 1, 2, 3, 0, 2, 5",
			r.EarlyDrops(), r.GCEvicted(), r.Evicted(), r.Drops(), r.Held, r.Inserts())
	}
	if s.Rows[0].LastReason != event.ReasonGCEvict || !s.Rows[0].LastDrop.Equal(gc.Time) {
		t.Errorf("last %s at %v, want gc_evict at %v", s.Rows[0].LastReason, s.Rows[0].LastDrop, gc.Time)
	}
	if o := s.Other.Total; o.GCEvicted() != 1 || o.EarlyDrops() != 0 || o.Held != -1 {
		t.Errorf("other: gc %d, early drops %d, held %d; want 1, 0, -1", o.GCEvicted(), o.EarlyDrops(), o.Held)
	}
	if s.Rows[0].Err != 0 {
		t.Errorf("err %d, want 0: the source has had its row since its first event", s.Rows[0].Err)
	}
}

// TestSeedingRespectsBound: the table dump at start is counted under the
// same bound, and a large holder keeps its row against many small ones.
func TestSeedingRespectsBound(t *testing.T) {
	tr := newHistory(t, 10, Grouping{})
	big := key(testNetns, "198.51.100.7/32")
	tr.AddHeld(big, 50)
	for i := range 100 {
		tr.AddHeld(DefaultGrouping.KeyFor(event.NetnsOf(testNetns), netip.AddrFrom4([4]byte{10, 0, 0, byte(i)})), 1)
	}
	s := tr.Read()
	checkSums(t, s)
	s.Rows = topRows(s.Rows, func(c Counts) uint64 { return uint64(max(c.Held, 0)) }, 3)
	if s.Tracked != 10 || s.Totals.Total.Held != 150 || s.Rows[0].Key != big || s.Rows[0].Total.Held != 50 || s.Rows[0].Err != 0 {
		t.Errorf("tracked %d, totals held %d, first row %+v", s.Tracked, s.Totals.Total.Held, s.Rows[0])
	}
	if s.Other.Total.Held < 90 {
		t.Errorf("other holds %d, want the small holders' 90 or more", s.Other.Total.Held)
	}
	tr.AddHeld(big, -45)
	if s = tr.Read(); s.Totals.Total.Held != 105 {
		t.Errorf("after AddHeld(-45): totals %d", s.Totals.Total.Held)
	}
	checkSums(t, s)
}

func TestLastDrop(t *testing.T) {
	tr := newHistory(t, 10, Grouping{})
	ev := from(event.ReasonTableFull, "10.0.0.1")
	add(tr, ev)
	ev.Reason, ev.Time = event.ReasonInsertFailed, ev.Time.Add(time.Second)
	add(tr, ev)
	ev.Reason = event.ReasonInsert // not a drop: the last drop stays
	add(tr, ev)
	late := from(event.ReasonAllocFailed, "10.0.0.1") // read late from another CPU
	add(tr, late)
	s := tr.Read()
	if r := s.Rows[0]; r.LastReason != event.ReasonInsertFailed || !r.LastDrop.Equal(ev.Time) {
		t.Errorf("last %s at %v, want insert_failed at %v", r.LastReason, r.LastDrop, ev.Time)
	}
	if s.Totals.LastReason != event.ReasonInsertFailed {
		t.Errorf("totals last %s", s.Totals.LastReason)
	}
}

func TestAddDoesNotAllocate(t *testing.T) {
	tr := newHistory(t, 100, Grouping{})
	ev := from(event.ReasonTableFull, "10.0.0.1")
	var n uint32
	reasons := []event.Reason{event.ReasonTableFull, event.ReasonInsert, event.ReasonDelete, event.ReasonEarlyDrop, event.ReasonInsertFailed}
	allocs := testing.AllocsPerRun(10000, func() {
		n++
		src := n % 1000 // ten sources for each row: rows change hands
		ev.Flow.Src = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(src >> 8), byte(src)}), 1)
		ev.Reason = reasons[n%uint32(len(reasons))]
		add(tr, ev)
	})
	if allocs != 0 {
		t.Errorf("AddCounts allocates %v times per event", allocs)
	}
	if tr.evictions == 0 {
		t.Error("the bound never bit: the test measured the easy path only")
	}
}

// add counts one event as the kernel's map would report it to AddCounts:
// a refusal or an insert (activity), a delete or an eviction (an entry
// gone), or a clash resolved (neither).
func add(tr *History, ev *event.Event) {
	if !ev.Reason.Valid() {
		return
	}
	var c Counts
	c.Events.Add(ev.Reason, 1)
	last := event.Reason("")
	if ev.Reason.IsDrop() || ev.Reason.IsEviction() {
		last = ev.Reason
	}
	switch {
	case ev.Reason == event.ReasonInsert:
		c.Held = 1
	case removes(ev.Reason):
		c.Held = -1
	}
	tr.AddCounts(tr.grouping.KeyOf(ev), c, last, ev.Time)
}

// topRows is the n rows with the most of by, most first.
func topRows(rows []Row, by func(Counts) uint64, n int) []Row {
	slices.SortFunc(rows, func(a, b Row) int { return cmp.Compare(by(b.Total), by(a.Total)) })
	return rows[:min(n, len(rows))]
}

// KeyOf groups the event's source: the originator of the flow refused, or
// of the entry concerned (the victim, for early_drop).
func (g Grouping) KeyOf(ev *event.Event) Key {
	if !ev.Flow.Valid() {
		return Key{Netns: ev.Netns}
	}
	return g.KeyFor(ev.Netns, ev.Flow.Src.Addr())
}
