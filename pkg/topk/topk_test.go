package topk

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
		Netns:  netns,
		Flow: event.Tuple{Family: fam, Proto: event.ProtoUDP,
			Src: netip.AddrPortFrom(src, 40000), Dst: netip.AddrPortFrom(dst, 53)},
	}
}

func from(r event.Reason, src string) *event.Event {
	return flowFrom(r, testNetns, netip.MustParseAddr(src))
}

func newTracker(t testing.TB, capacity int, g Grouping) *Tracker {
	t.Helper()
	tr, err := NewTracker(capacity, g)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func key(netns uint32, prefix string) Key {
	return Key{Netns: netns, Prefix: netip.MustParsePrefix(prefix)}
}

// model is the truth the tracker approximates: exact counts for every key,
// with no bound.
type model struct {
	keys   map[Key]*Counts
	totals Counts
}

func newModel() *model { return &model{keys: map[Key]*Counts{}} }

func (m *model) of(k Key) *Counts {
	c := m.keys[k]
	if c == nil {
		c = &Counts{}
		m.keys[k] = c
	}
	return c
}

func (m *model) add(k Key, r event.Reason) {
	for _, c := range []*Counts{m.of(k), &m.totals} {
		switch r {
		case event.ReasonInsert:
			c.Inserts++
			c.Held++
		case event.ReasonDelete:
			c.Deletes++
			c.Held--
		case event.ReasonEarlyDrop, event.ReasonGCEvict:
			c.EarlyDropVictim++
			c.Held--
		default:
			c.countRefusal(r)
		}
	}
}

func (m *model) addHeld(k Key, n int64) {
	m.of(k).Held += n
	m.totals.Held += n
}

// checkStructure verifies the heap, the positions and the index against
// the rows.
func checkStructure(t *testing.T, tr *Tracker) {
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
	used := 0
	for _, s := range tr.index.slots {
		if s.ref != 0 {
			used++
		}
	}
	if used != len(tr.rows) {
		t.Fatalf("index holds %d keys, %d rows", used, len(tr.rows))
	}
	for i := range tr.rows {
		if j, ok := tr.index.find(tr.rows[i].key, tr.rows); !ok || int(j) != i {
			t.Fatalf("row %d (%v) found at %d, %v", i, tr.rows[i].key, j, ok)
		}
	}
}

// checkSums verifies that the rows and "other" add up to the totals, in
// every column, over all time and over the interval.
func checkSums(t *testing.T, s Snapshot) {
	t.Helper()
	var all, interval Counts
	for _, r := range s.Rows {
		all.add(r.Counts)
		interval.add(r.Interval)
	}
	all.add(s.Other.Counts)
	interval.add(s.Other.Interval)
	if all != s.Totals.Counts {
		t.Fatalf("rows + other = %+v, totals %+v", all, s.Totals.Counts)
	}
	if interval != s.Totals.Interval {
		t.Fatalf("interval: rows + other = %+v, totals %+v", interval, s.Totals.Interval)
	}
	if s.Tracked != len(s.Rows) {
		t.Fatalf("tracked %d, %d rows", s.Tracked, len(s.Rows))
	}
}

// checkBounds verifies each row against the truth: weighed columns within
// Err, the others lower bounds, everything exact when Err is 0.
func checkBounds(t *testing.T, s Snapshot, m *model) (bounded int) {
	t.Helper()
	for _, r := range s.Rows {
		truth := *m.keys[r.Key]
		if r.Err == 0 {
			if r.Counts != truth {
				t.Fatalf("%v: Err 0 but %+v, truth %+v", r.Key, r.Counts, truth)
			}
			continue
		}
		for _, c := range []struct {
			name       string
			got, truth uint64
		}{
			{"table_full", r.TableFull, truth.TableFull},
			{"alloc_failed", r.AllocFailed, truth.AllocFailed},
			{"insert_failed", r.InsertFailed, truth.InsertFailed},
			{"inserts", r.Inserts, truth.Inserts},
		} {
			if c.got > c.truth || c.truth > c.got+r.Err {
				t.Fatalf("%v: %s %d, truth %d, err %d", r.Key, c.name, c.got, c.truth, r.Err)
			}
		}
		if r.EarlyDropVictim > truth.EarlyDropVictim {
			t.Fatalf("%v: early drops %d over the truth %d", r.Key, r.EarlyDropVictim, truth.EarlyDropVictim)
		}
		if r.Held < 0 || r.Held > truth.Held {
			t.Fatalf("%v: held %d, truth %d", r.Key, r.Held, truth.Held)
		}
		bounded++
	}
	return bounded
}

func TestExactWhileSourcesFit(t *testing.T) {
	tr := newTracker(t, 64, Grouping{})
	m := newModel()
	rng := rand.New(rand.NewPCG(1, 2))
	reasons := event.Reasons()
	for range 20000 {
		src := netip.AddrFrom4([4]byte{10, 0, 0, byte(rng.IntN(64))})
		ev := flowFrom(reasons[rng.IntN(len(reasons))], testNetns, src)
		k := DefaultGrouping.KeyOf(ev)
		if (ev.Reason == event.ReasonDelete || ev.Reason == event.ReasonEarlyDrop || ev.Reason == event.ReasonGCEvict) && m.of(k).Held == 0 {
			continue // an entry must exist to go
		}
		add(tr, ev)
		if ev.Reason != event.ReasonClashResolved {
			m.add(k, ev.Reason)
		}
	}
	checkStructure(t, tr)
	s := tr.Snapshot()
	checkSums(t, s)
	if s.Tracked != 64 || s.Evictions != 0 || s.Bounded() || s.Other.Counts != (Counts{}) {
		t.Errorf("tracked %d, evictions %d, other %+v", s.Tracked, s.Evictions, s.Other.Counts)
	}
	for _, r := range s.Rows {
		if r.Err != 0 || r.Counts != *m.keys[r.Key] {
			t.Errorf("%v: %+v err %d, want %+v exactly", r.Key, r.Counts, r.Err, *m.keys[r.Key])
		}
	}
	if s.Totals.Counts != m.totals {
		t.Errorf("totals %+v, want %+v", s.Totals.Counts, m.totals)
	}
}

// TestOtherMakesTotalsAddUp runs random streams with many more sources
// than rows and checks, at every snapshot, that nothing was lost or counted
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
			tr := newTracker(t, capacity, Grouping{})
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
				case (ev.Reason == event.ReasonDelete || ev.Reason == event.ReasonEarlyDrop || ev.Reason == event.ReasonGCEvict) && m.of(k).Held <= 0:
				case ev.Reason == event.ReasonClashResolved:
					add(tr, ev)
				default:
					add(tr, ev)
					m.add(k, ev.Reason)
				}
				if step%500 == 499 {
					checkStructure(t, tr)
					s := tr.Snapshot()
					checkSums(t, s)
					bounded += checkBounds(t, s, m)
					if s.Totals.Counts != m.totals {
						t.Fatalf("totals %+v, want %+v", s.Totals.Counts, m.totals)
					}
				}
			}
			if s := tr.Snapshot(); !s.Bounded() || s.Tracked != capacity {
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
	tr := newTracker(t, 1000, Grouping{})
	heavy := []netip.Addr{}
	truth := map[Key]uint64{}
	for i := range 5 {
		a := netip.AddrFrom4([4]byte{203, 0, 113, byte(i + 1)})
		heavy = append(heavy, a)
		truth[DefaultGrouping.KeyFor(testNetns, a)] = 0
	}
	rng := rand.New(rand.NewPCG(7, 7))
	ev := flowFrom(event.ReasonTableFull, testNetns, heavy[0])
	for sent := 0; sent < flood; {
		if i := rng.IntN(10); i < 5 && sent >= head {
			ev.Flow.Src = netip.AddrPortFrom(heavy[i], 1)
			truth[DefaultGrouping.KeyFor(testNetns, heavy[i])]++
		} else {
			ev.Flow.Src = netip.AddrPortFrom(netip.AddrFrom4([4]byte{byte(1 + rng.IntN(200)), byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32())}), 1)
			sent++
		}
		add(tr, ev)
	}
	checkStructure(t, tr)
	s := tr.Snapshot()
	s.Rows = topRows(s.Rows, Counts.Drops, 5)
	if !s.Bounded() || s.Tracked != 1000 {
		t.Errorf("tracked %d, evictions %d: the flood should have filled the rows", s.Tracked, s.Evictions)
	}
	bound := s.Totals.Drops() / uint64(s.Capacity)
	for _, r := range s.Rows {
		want, ok := truth[r.Key]
		if !ok {
			t.Errorf("%v ranked in the top 5 with %d drops, err %d: not a heavy source", r.Key, r.Drops(), r.Err)
			continue
		}
		if r.Drops() > want || want > r.Drops()+r.Err || r.Err > bound {
			t.Errorf("%v: %d drops (err %d, at most %d), truth %d", r.Key, r.Drops(), r.Err, bound, want)
		}
		if head > 0 && r.Err == 0 {
			t.Errorf("%v: err 0 although every row was taken before it came", r.Key)
		}
		t.Logf("%v: counted %d of %d drops, err %d (N/k = %d)", r.Prefix, r.Drops(), want, r.Err, bound)
	}
	if len(s.Rows) != 5 {
		t.Errorf("%d rows, want 5", len(s.Rows))
	}
	var rest uint64
	for _, r := range tr.Snapshot().Rows {
		rest += r.Drops()
	}
	if rest+s.Other.Drops() != s.Totals.Drops() || s.Totals.Drops() != uint64(flood)+truthSum(truth) {
		t.Errorf("rows %d + other %d, totals %d, sent %d", rest, s.Other.Drops(), s.Totals.Drops(), uint64(flood)+truthSum(truth))
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
		if got := g.KeyFor(tt.netns, netip.MustParseAddr(tt.src)); got != tt.want {
			t.Errorf("KeyFor(%d, %s) = %v, want %v", tt.netns, tt.src, got, tt.want)
		}
	}
	if got := (Grouping{}).KeyFor(1, netip.MustParseAddr("::ffff:10.1.2.9")); got != key(1, "10.1.2.9/32") {
		t.Errorf("default grouping: %v", got)
	}
	if got := (Grouping{}).KeyFor(1, netip.MustParseAddr("2001:db8::7")); got != key(1, "2001:db8::7/128") {
		t.Errorf("default grouping: %v", got)
	}
	if got := g.KeyOf(&event.Event{Netns: 5, Reason: event.ReasonTableFull}); got.Valid() || got.Netns != 5 {
		t.Errorf("event without a flow: %v, want an invalid key", got)
	}

	tr := newTracker(t, 10, g)
	for _, tt := range tests {
		add(tr, flowFrom(event.ReasonTableFull, tt.netns, netip.MustParseAddr(tt.src)))
	}
	add(tr, &event.Event{Netns: 1, Reason: event.ReasonTableFull})
	s := tr.Snapshot()
	got := map[Key]uint64{}
	for _, r := range s.Rows {
		got[r.Key] = r.TableFull
	}
	want := map[Key]uint64{
		key(1, "10.1.2.0/24"): 3, key(2, "10.1.2.0/24"): 1, key(1, "10.1.3.0/24"): 1,
		key(1, "2001:db8:1:2::/64"): 2, key(1, "fe80::/64"): 1, key(1, "2001:db8:1:3::/64"): 1,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("rows %v, want %v", got, want)
	}
	if s.Other.TableFull != 1 || s.Totals.TableFull != 10 {
		t.Errorf("other %d, totals %d; want 1 and 10", s.Other.TableFull, s.Totals.TableFull)
	}
}

func TestGroupingValidate(t *testing.T) {
	for _, g := range []Grouping{{}, {V4Bits: 1, V6Bits: 1}, {V4Bits: 32, V6Bits: 128}, {V4Bits: 24}} {
		if err := g.Validate(); err != nil {
			t.Errorf("%+v: %v", g, err)
		}
	}
	for _, g := range []Grouping{{V4Bits: 33}, {V6Bits: 129}, {V4Bits: -1}} {
		if _, err := NewTracker(10, g); err == nil {
			t.Errorf("%+v accepted", g)
		}
	}
	for _, c := range []int{0, -1, MaxCapacity + 1} {
		if _, err := NewTracker(c, Grouping{}); err == nil || !strings.Contains(err.Error(), "max sources") {
			t.Errorf("capacity %d: %v", c, err)
		}
	}
}

func TestIntervalCounts(t *testing.T) {
	tr := newTracker(t, 2, Grouping{})
	add(tr, from(event.ReasonTableFull, "10.0.0.1"))
	add(tr, from(event.ReasonTableFull, "10.0.0.1"))
	add(tr, from(event.ReasonInsert, "10.0.0.2"))
	first := tr.Snapshot()
	if first.Rows[0].Interval.TableFull != 2 || first.Rows[1].Interval.Inserts != 1 || first.Interval <= 0 {
		t.Fatalf("first interval: %+v", first.Rows)
	}
	add(tr, from(event.ReasonTableFull, "10.0.0.1"))
	add(tr, from(event.ReasonDelete, "10.0.0.2"))
	// A third source displaces .2 (the lighter): its interval goes to
	// "other" with it, its earlier counts too, and the interval still adds up.
	add(tr, from(event.ReasonTableFull, "10.0.0.3"))
	s := tr.Snapshot()
	checkSums(t, s)
	r := s.Rows[0]
	if r.Prefix.Addr().String() != "10.0.0.1" || r.TableFull != 3 || r.Interval.TableFull != 1 {
		t.Errorf("10.0.0.1: %+v", r)
	}
	if s.Other.Inserts != 1 || s.Other.Interval.Inserts != 0 || s.Other.Interval.Held != -1 || s.Other.Held != 0 {
		t.Errorf("other: %+v interval %+v", s.Other.Counts, s.Other.Interval)
	}
	if s.Totals.Interval.TableFull != 2 || s.Totals.Interval.Held != -1 {
		t.Errorf("totals interval: %+v", s.Totals.Interval)
	}
	if s.Rows[1].Err != 1 || s.Evictions != 1 {
		t.Errorf("10.0.0.3: err %d, evictions %d; want 1 and 1", s.Rows[1].Err, s.Evictions)
	}
	if third := tr.Snapshot(); third.Totals.Interval != (Counts{}) {
		t.Errorf("nothing happened, interval %+v", third.Totals.Interval)
	}
}

// TestHeldNeverBelowZero: a source that lost its row and came back does
// not know how many entries it held; deletes of those come out of "other".
func TestHeldNeverBelowZero(t *testing.T) {
	tr := newTracker(t, 1, Grouping{})
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
	s := tr.Snapshot()
	checkSums(t, s)
	r := s.Rows[0]
	if r.Held != 0 || s.Other.Held != 2 || s.Totals.Held != 2 {
		t.Errorf("held: row %d, other %d, totals %d; want 0, 2, 2", r.Held, s.Other.Held, s.Totals.Held)
	}
	add(tr, from(event.ReasonEarlyDrop, "10.0.0.1"))
	add(tr, from(event.ReasonEarlyDrop, "10.0.0.9"))
	s = tr.Snapshot()
	checkSums(t, s)
	if s.Rows[0].EarlyDropVictim != 1 || s.Other.EarlyDropVictim != 1 || s.Other.Held != 0 || s.Rows[0].Last != event.ReasonEarlyDrop {
		t.Errorf("early drops: row %+v, other %+v", s.Rows[0], s.Other.Counts)
	}
	if s.Tracked != 1 || s.Evictions != 2 {
		t.Errorf("an eviction victim must not take a row: tracked %d, evictions %d", s.Tracked, s.Evictions)
	}
}

// TestSeedingRespectsBound: the table dump at start is counted under the
// same bound, and a large holder keeps its row against many small ones.
func TestSeedingRespectsBound(t *testing.T) {
	tr := newTracker(t, 10, Grouping{})
	big := key(testNetns, "198.51.100.7/32")
	tr.AddHeld(big, 50)
	for i := range 100 {
		tr.AddHeld(DefaultGrouping.KeyFor(testNetns, netip.AddrFrom4([4]byte{10, 0, 0, byte(i)})), 1)
	}
	s := tr.Snapshot()
	checkSums(t, s)
	s.Rows = topRows(s.Rows, func(c Counts) uint64 { return uint64(max(c.Held, 0)) }, 3)
	if s.Tracked != 10 || s.Totals.Held != 150 || s.Rows[0].Key != big || s.Rows[0].Held != 50 || s.Rows[0].Err != 0 {
		t.Errorf("tracked %d, totals held %d, first row %+v", s.Tracked, s.Totals.Held, s.Rows[0])
	}
	if s.Other.Held < 90 {
		t.Errorf("other holds %d, want the small holders' 90 or more", s.Other.Held)
	}
	tr.AddHeld(big, -45)
	if s = tr.Snapshot(); s.Totals.Held != 105 {
		t.Errorf("after AddHeld(-45): totals %d", s.Totals.Held)
	}
	checkSums(t, s)
}

func TestLastDrop(t *testing.T) {
	tr := newTracker(t, 10, Grouping{})
	ev := from(event.ReasonTableFull, "10.0.0.1")
	add(tr, ev)
	ev.Reason, ev.Time = event.ReasonInsertFailed, ev.Time.Add(time.Second)
	add(tr, ev)
	ev.Reason = event.ReasonInsert // not a drop: the last drop stays
	add(tr, ev)
	late := from(event.ReasonAllocFailed, "10.0.0.1") // read late from another CPU
	add(tr, late)
	s := tr.Snapshot()
	if r := s.Rows[0]; r.Last != event.ReasonInsertFailed || !r.LastDrop.Equal(ev.Time) {
		t.Errorf("last %s at %v, want insert_failed at %v", r.Last, r.LastDrop, ev.Time)
	}
	if s.Totals.Last != event.ReasonInsertFailed {
		t.Errorf("totals last %s", s.Totals.Last)
	}
}

func TestAddDoesNotAllocate(t *testing.T) {
	tr := newTracker(t, 100, Grouping{})
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
		t.Errorf("Add allocates %v times per event", allocs)
	}
	if tr.evictions == 0 {
		t.Error("the bound never bit: the test measured the easy path only")
	}
}

// add counts one event as the kernel's map would report it to AddCounts:
// a refusal or an insert (activity), or a delete or an eviction (an entry
// gone).
func add(tr *Tracker, ev *event.Event) {
	var c Counts
	last := event.Reason("")
	switch ev.Reason {
	case event.ReasonTableFull, event.ReasonAllocFailed, event.ReasonInsertFailed:
		c.countRefusal(ev.Reason)
		last = ev.Reason
	case event.ReasonInsert:
		c.Inserts, c.Held = 1, 1
	case event.ReasonEarlyDrop, event.ReasonGCEvict:
		c.EarlyDropVictim, c.Held = 1, -1
		last = ev.Reason
	case event.ReasonDelete:
		c.Deletes, c.Held = 1, -1
	default:
		return // clash_resolved neither refuses, adds nor removes an entry
	}
	tr.AddCounts(tr.grouping.KeyOf(ev), c, last, ev.Time)
}

// topRows is the n rows with the most of by, most first.
func topRows(rows []Row, by func(Counts) uint64, n int) []Row {
	slices.SortFunc(rows, func(a, b Row) int { return cmp.Compare(by(b.Counts), by(a.Counts)) })
	return rows[:min(n, len(rows))]
}

// countRefusal counts one refused packet of reason r.
func (c *Counts) countRefusal(r event.Reason) {
	switch r {
	case event.ReasonTableFull:
		c.TableFull++
	case event.ReasonAllocFailed:
		c.AllocFailed++
	case event.ReasonInsertFailed:
		c.InsertFailed++
	}
}

// KeyOf groups the event's source: the originator of the flow refused, or
// of the entry concerned (the victim, for early_drop).
func (g Grouping) KeyOf(ev *event.Event) Key {
	if !ev.Flow.Valid() {
		return Key{Netns: ev.Netns}
	}
	return g.KeyFor(ev.Netns, ev.Flow.Src.Addr())
}
