package top

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
)

// Namespaces of the tests of namespaces that come and go: A dies and B
// gets its inode number at once, as the kernel hands it on; C lives.
var (
	nsA = event.Netns{ID: 1, Inode: 7}
	nsB = event.Netns{ID: 2, Inode: 7}
	nsC = event.Netns{ID: 3, Inode: 8}
)

func keyIn(netns event.Netns, prefix string) Key {
	return Key{Netns: netns, Prefix: netip.MustParsePrefix(prefix)}
}

// addN counts n events of reason r for k, as the kernel's map reports them.
func addN(tr *History, k Key, r event.Reason, n uint64) {
	var c Counts
	c.Events.Add(r, n)
	c.Held = heldChange(c.Events)
	last := event.Reason("")
	if r.IsDrop() || r.IsEviction() {
		last = r
	}
	tr.AddCounts(k, c, last, time.Unix(1700000000, 0))
}

func inNs(netns event.Netns) func(Key) bool {
	return func(k Key) bool { return k.Netns == netns }
}

// rowsByKey is a reading's rows by key.
func rowsByKey(t *testing.T, s Tally) map[Key]Row {
	t.Helper()
	m := map[Key]Row{}
	for _, r := range s.Rows {
		if _, dup := m[r.Key]; dup {
			t.Fatalf("two rows for %v", r.Key)
		}
		m[r.Key] = r
	}
	return m
}

func dropCounts(n uint64) Counts {
	var c Counts
	c.Events.Add(event.ReasonTableFull, n)
	return c
}

// Forget takes a dead namespace's rows away, and their counts from the
// totals, now and over the interval; the rows go to the next new keys,
// with the floor as their error; the other namespaces' rows keep their
// exact counts.
func TestForgetFreesADeadNamespacesRows(t *testing.T) {
	tr := newHistory(t, 4, Grouping{})
	c1, c2 := keyIn(nsC, "192.0.2.1/32"), keyIn(nsC, "192.0.2.2/32")
	a1, a2, a3 := keyIn(nsA, "10.0.0.1/32"), keyIn(nsA, "10.0.0.2/32"), keyIn(nsA, "10.0.0.3/32")
	addN(tr, c1, event.ReasonTableFull, 10)
	addN(tr, c2, event.ReasonInsert, 8)
	addN(tr, a1, event.ReasonTableFull, 20)
	addN(tr, a1, event.ReasonInsert, 4)
	addN(tr, a2, event.ReasonTableFull, 5)
	tr.AddCounts(Key{Netns: nsA}, dropCounts(2), event.ReasonTableFull, time.Unix(1700000000, 0)) // no flow: "other"
	checkSums(t, tr.Read())

	// a3 takes the lightest row, a2's (5): the floor is 5.
	addN(tr, a3, event.ReasonTableFull, 1)
	addN(tr, a1, event.ReasonTableFull, 3)
	addN(tr, a1, event.ReasonDelete, 1)
	addN(tr, c1, event.ReasonTableFull, 2)
	addN(tr, c2, event.ReasonEarlyDrop, 1)
	if tr.floor != 5 || tr.evictions != 1 {
		t.Fatalf("floor %d, evictions %d; want 5 and 1", tr.floor, tr.evictions)
	}
	checkStructure(t, tr)
	totalsBefore, intervalBefore := tr.totals.now, tr.totals.now.minus(tr.totals.atRead)

	tr.Forget(inNs(nsA))
	checkStructure(t, tr)
	if len(tr.gone) != 2 {
		t.Fatalf("%d rows freed, want a1's and a3's", len(tr.gone))
	}
	s := tr.Read()
	checkSums(t, s)
	rows := rowsByKey(t, s)
	if len(rows) != 2 || s.Tracked != 2 || s.Capacity != 4 {
		t.Fatalf("rows %v (tracked %d of %d), want c1 and c2 only", rows, s.Tracked, s.Capacity)
	}
	// a1: 23 drops, 4 inserts, 1 delete (held 3), 3 drops and the delete in
	// the interval; a3: 1 drop, in the interval.
	var gone, goneInterval Counts
	gone.Events.Add(event.ReasonTableFull, 24)
	gone.Events.Add(event.ReasonInsert, 4)
	gone.Events.Add(event.ReasonDelete, 1)
	gone.Held = 3
	goneInterval.Events.Add(event.ReasonTableFull, 4)
	goneInterval.Events.Add(event.ReasonDelete, 1)
	goneInterval.Held = -1
	if want := totalsBefore.minus(gone); s.Totals.Total != want {
		t.Errorf("totals %+v, want %+v (%+v less a1's and a3's %+v)", s.Totals.Total, want, totalsBefore, gone)
	}
	if want := intervalBefore.minus(goneInterval); s.Totals.Rate != want {
		t.Errorf("totals' interval %+v, want %+v", s.Totals.Rate, want)
	}
	wantC1 := dropCounts(12)
	var wantC2 Counts
	wantC2.Events.Add(event.ReasonInsert, 8)
	wantC2.Events.Add(event.ReasonEarlyDrop, 1)
	wantC2.Held = 7
	if r := rows[c1]; r.Total != wantC1 || r.Rate != dropCounts(2) || r.Err != 0 {
		t.Errorf("c1: %+v, want %+v exactly (2 in the interval)", r, wantC1)
	}
	if r := rows[c2]; r.Total != wantC2 || r.Err != 0 {
		t.Errorf("c2: %+v, want %+v exactly", r, wantC2)
	}
	// What left the rows before A died stays in "other": a2's 5 drops and
	// the 2 without a flow.
	if s.Other.Total.Drops() != 7 || s.Evictions != 1 {
		t.Errorf("other %d drops, evictions %d; want 7 and 1", s.Other.Total.Drops(), s.Evictions)
	}

	// B's source with a1's address is another key: it takes a freed row,
	// with the floor as its error, and so does a1 seen again (a new key
	// equal to the forgotten one): each counts from zero.
	b1 := keyIn(nsB, "10.0.0.1/32")
	addN(tr, b1, event.ReasonTableFull, 7)
	addN(tr, a1, event.ReasonTableFull, 2)
	checkStructure(t, tr)
	if len(tr.gone) != 0 || tr.evictions != 1 {
		t.Fatalf("%d rows still free, %d evictions: the new keys should have taken the freed rows", len(tr.gone), tr.evictions)
	}
	s = tr.Read()
	checkSums(t, s)
	rows = rowsByKey(t, s)
	if r := rows[b1]; r.Total != dropCounts(7) || r.Rate != dropCounts(7) || r.Err != 5 {
		t.Errorf("b1: %+v, want 7 drops, err 5 (the floor)", r)
	}
	if r := rows[a1]; r.Total != dropCounts(2) || r.Err != 5 {
		t.Errorf("a1 again: %+v, want a fresh row: 2 drops, err 5", r)
	}
	if r := rows[c1]; r.Total != wantC1 || r.Err != 0 {
		t.Errorf("c1 after the reuse: %+v", r)
	}
	if s.Tracked != 4 || s.Totals.Total.Drops() != 12+7+2+7 {
		t.Errorf("tracked %d, totals %d drops; want 4 and 28", s.Tracked, s.Totals.Total.Drops())
	}

	// Full again: the next new key displaces the lightest, a1 (5+2), and
	// the floor rises to 7.
	d := keyIn(nsC, "192.0.2.9/32")
	addN(tr, d, event.ReasonTableFull, 1)
	checkStructure(t, tr)
	s = tr.Read()
	checkSums(t, s)
	rows = rowsByKey(t, s)
	if _, ok := rows[a1]; ok || rows[d].Err != 7 || s.Evictions != 2 || tr.floor != 7 {
		t.Errorf("rows %v, evictions %d, floor %d: want a1 displaced by d (err 7)", rows, s.Evictions, tr.floor)
	}
}

// A freed row's error is the floor: the heaviest weight ever displaced,
// not the lightest row's weight now (a key without a row may have done as
// much as any displaced key, unseen), and 0 while none ever was.
func TestForgetReuseErrIsTheFloor(t *testing.T) {
	t.Run("never displaced", func(t *testing.T) {
		tr := newHistory(t, 2, Grouping{})
		addN(tr, keyIn(nsA, "10.0.0.1/32"), event.ReasonTableFull, 9)
		addN(tr, keyIn(nsC, "10.0.0.2/32"), event.ReasonTableFull, 3)
		tr.Forget(inNs(nsA))
		addN(tr, keyIn(nsB, "10.0.0.1/32"), event.ReasonTableFull, 1)
		checkStructure(t, tr)
		s := tr.Read()
		checkSums(t, s)
		for _, r := range s.Rows {
			if r.Err != 0 {
				t.Errorf("%v: err %d, want 0: no key ever lost its row", r.Key, r.Err)
			}
		}
	})
	t.Run("heaviest displaced", func(t *testing.T) {
		tr := newHistory(t, 2, Grouping{})
		addN(tr, keyIn(nsC, "10.0.0.1/32"), event.ReasonTableFull, 100)
		addN(tr, keyIn(nsA, "10.0.0.2/32"), event.ReasonTableFull, 30)
		addN(tr, keyIn(nsC, "10.0.0.3/32"), event.ReasonTableFull, 1) // displaces .2 (30): err 30
		addN(tr, keyIn(nsA, "10.0.0.4/32"), event.ReasonTableFull, 1) // displaces .3 (31): err 31
		if tr.floor != 31 {
			t.Fatalf("floor %d, want 31", tr.floor)
		}
		tr.Forget(inNs(nsA)) // .4, weighing 32, is freed; the lightest live row weighs 100
		b := keyIn(nsB, "10.0.0.5/32")
		addN(tr, b, event.ReasonTableFull, 1)
		checkStructure(t, tr)
		s := tr.Read()
		checkSums(t, s)
		if r := rowsByKey(t, s)[b]; r.Err != 31 || r.Total != dropCounts(1) {
			t.Errorf("reused row %+v, want err 31 (the heaviest displaced)", r)
		}
	})
}

// Forgetting a namespace with no row, or one already forgotten, changes
// nothing; forgetting every row leaves totals = other.
func TestForgetNothingAndEverything(t *testing.T) {
	tr := newHistory(t, 3, Grouping{})
	addN(tr, keyIn(nsA, "10.0.0.1/32"), event.ReasonTableFull, 4)
	addN(tr, keyIn(nsC, "10.0.0.1/32"), event.ReasonInsert, 2)
	before := tr.Read()
	tr.Forget(inNs(nsB))
	tr.Forget(func(Key) bool { return false })
	checkStructure(t, tr)
	s := tr.Read()
	if s.Totals.Total != before.Totals.Total || s.Tracked != 2 || len(tr.gone) != 0 {
		t.Errorf("forgetting nothing changed the history: totals %+v, tracked %d", s.Totals.Total, s.Tracked)
	}
	tr.Forget(inNs(nsA))
	tr.Forget(inNs(nsA))
	if len(tr.gone) != 1 {
		t.Fatalf("%d rows freed, want 1: a row is freed once", len(tr.gone))
	}
	tr.Forget(func(Key) bool { return true })
	checkStructure(t, tr)
	s = tr.Read()
	checkSums(t, s)
	if s.Tracked != 0 || len(s.Rows) != 0 || s.Totals.Total != s.Other.Total || s.Totals.Total != (Counts{}) {
		t.Errorf("everything forgotten: %d rows, totals %+v, other %+v", len(s.Rows), s.Totals.Total, s.Other.Total)
	}
	// Every row free: new keys take them (three), then displace.
	for i := range 5 {
		addN(tr, keyIn(nsC, fmt.Sprintf("10.0.1.%d/32", i)), event.ReasonTableFull, uint64(1+i))
		checkStructure(t, tr)
	}
	s = tr.Read()
	checkSums(t, s)
	if s.Tracked != 3 || s.Totals.Total.Drops() != 15 || s.Evictions != 2 {
		t.Errorf("tracked %d, totals %d drops, evictions %d; want 3, 15, 2", s.Tracked, s.Totals.Total.Drops(), s.Evictions)
	}
}

// TestForgetKeepsSumsAndBounds runs random streams over three namespaces
// with many more sources than rows, forgetting a namespace now and then:
// at every Forget the totals lose exactly the forgotten rows' counts, now
// and over the interval; the structure holds throughout; at every reading
// rows + other = totals, and every row is within its bounds against the
// truth of its key since its namespace was last forgotten.
func TestForgetKeepsSumsAndBounds(t *testing.T) {
	namespaces := []event.Netns{nsA, nsB, nsC}
	bounded, forgotten, reused := 0, 0, 0
	for seed := range uint64(30) {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 7))
			capacity := 1 + rng.IntN(30)
			sources := capacity + 1 + rng.IntN(200)
			tr := newHistory(t, capacity, Grouping{})
			m := newModel()
			reasons := event.Reasons()
			for step := range 4000 {
				netns := namespaces[rng.IntN(len(namespaces))]
				n := int(float64(sources) * rng.Float64() * rng.Float64())
				ev := flowFrom(reasons[rng.IntN(len(reasons))], 0, netip.AddrFrom4([4]byte{10, byte(n >> 16), byte(n >> 8), byte(n)}))
				ev.Netns = netns
				k := DefaultGrouping.KeyOf(ev)
				switch {
				case rng.IntN(300) == 0:
					dead := namespaces[rng.IntN(len(namespaces))]
					forgetChecked(t, tr, dead)
					for key := range m.keys {
						if key.Netns == dead {
							delete(m.keys, key)
							delete(m.active, key)
						}
					}
					forgotten++
				case rng.IntN(100) == 0:
					h := int64(1 + rng.IntN(5))
					tr.AddHeld(k, h)
					m.addHeld(k, h)
				case removes(ev.Reason) && m.of(k).Held <= 0:
				case ev.Reason == event.ReasonClashResolved && !m.active[k]:
				default:
					free := len(tr.gone)
					add(tr, ev)
					m.add(k, ev.Reason)
					if len(tr.gone) < free {
						reused++
					}
				}
				if step%400 == 399 {
					checkStructure(t, tr)
					s := tr.Read()
					checkSums(t, s)
					bounded += checkBounds(t, s, m)
					for _, r := range s.Rows {
						if r.Err > tr.floor {
							t.Fatalf("%v: err %d over the floor %d", r.Key, r.Err, tr.floor)
						}
					}
				}
			}
		})
	}
	if !t.Failed() && (bounded == 0 || forgotten == 0 || reused == 0) {
		t.Errorf("%d bounded rows checked, %d namespaces forgotten, %d rows reused: some path went untested", bounded, forgotten, reused)
	}
}

// forgetChecked forgets dead's rows and checks that the totals lost
// exactly what they counted, now and at the last reading, that no row of
// dead is left and the other rows are untouched.
func forgetChecked(t *testing.T, tr *History, dead event.Netns) {
	t.Helper()
	var now, atRead Counts
	others := map[Key]tally{}
	for i := range tr.rows {
		r := &tr.rows[i]
		switch {
		case r.forgotten:
		case r.key.Netns == dead:
			now.add(r.now)
			atRead.add(r.atRead)
		default:
			others[r.key] = r.tally
		}
	}
	wantNow, wantAtRead := tr.totals.now.minus(now), tr.totals.atRead.minus(atRead)
	other := tr.other
	tr.Forget(inNs(dead))
	checkStructure(t, tr)
	if tr.totals.now != wantNow || tr.totals.atRead != wantAtRead {
		t.Fatalf("forget %v: totals %+v (at read %+v), want %+v (%+v)", dead, tr.totals.now, tr.totals.atRead, wantNow, wantAtRead)
	}
	if tr.other != other {
		t.Fatalf("forget %v changed other: %+v, was %+v", dead, tr.other, other)
	}
	for i := range tr.rows {
		r := &tr.rows[i]
		if r.forgotten {
			continue
		}
		if r.key.Netns == dead {
			t.Fatalf("forget %v left row %v", dead, r.key)
		}
		if others[r.key] != r.tally {
			t.Fatalf("forget %v changed %v: %+v, was %+v", dead, r.key, r.tally, others[r.key])
		}
	}
}

// AddCounts allocates nothing after Forget: the rows it frees are listed
// in an array NewHistory allocated whole, and taken back from it. Every
// allocation of the stream is counted (AllocsPerRun's average would round
// a few appends growing the array down to zero).
func TestAddDoesNotAllocateAfterForget(t *testing.T) {
	tr := newHistory(t, 100, Grouping{})
	ev := from(event.ReasonTableFull, "10.0.0.1")
	namespaces := []event.Netns{nsA, nsB, nsC}
	forget := []func(Key) bool{inNs(nsA), inNs(nsB), inNs(nsC)}
	reasons := []event.Reason{event.ReasonTableFull, event.ReasonInsert, event.ReasonDelete, event.ReasonEarlyDrop, event.ReasonInsertFailed}
	var n uint32
	step := func() {
		n++
		src := n % 1000 // ten sources for each row: rows change hands
		ev.Netns = namespaces[n%3]
		ev.Flow.Src = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(src >> 8), byte(src)}), 1)
		ev.Reason = reasons[n%uint32(len(reasons))]
		add(tr, ev)
	}
	for range 1000 {
		step() // every row taken, none ever freed
	}
	reused, freed := 0, 0
	measured := false
	allocs := testing.AllocsPerRun(1, func() {
		if !measured { // AllocsPerRun's warm-up: the stream is measured once
			measured = true
			return
		}
		for range 20000 {
			if n%500 == 0 {
				tr.Forget(forget[n/500%3])
				freed = max(freed, len(tr.gone))
			}
			free := len(tr.gone)
			step()
			if len(tr.gone) < free {
				reused++
			}
		}
	})
	if allocs != 0 {
		t.Errorf("AddCounts and Forget allocate %v times in 20,000 events", allocs)
	}
	if tr.evictions == 0 || reused == 0 || freed < 30 {
		t.Errorf("%d evictions, %d rows reused, at most %d free: the test measured the easy path only", tr.evictions, reused, freed)
	}
	checkStructure(t, tr)
}
