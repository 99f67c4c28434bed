package event

import (
	"net/netip"
	"testing"
)

// Counts add up by Reason.IsDrop and IsEviction, and only there: "drop"
// and "eviction" mean one set of reasons each, everywhere.
func TestCountsDropsAndEvictions(t *testing.T) {
	var c Counts
	for i, r := range Reasons() {
		c.Add(r, uint64(1)<<(4*i))
	}
	var drops, evictions uint64
	for i, r := range Reasons() {
		if got := c.Of(r); got != uint64(1)<<(4*i) {
			t.Errorf("Of(%s) = %d", r, got)
		}
		if r.IsDrop() {
			drops += uint64(1) << (4 * i)
		}
		if r.IsEviction() {
			evictions += uint64(1) << (4 * i)
		}
	}
	if c.Drops() != drops || c.Evictions() != evictions {
		t.Errorf("drops %#x, evictions %#x; want %#x, %#x", c.Drops(), c.Evictions(), drops, evictions)
	}
	c.Add("bogus", 5)
	if c.Of("bogus") != 0 || c[0] != 0 {
		t.Errorf("an unknown reason was counted: %v", c)
	}
	m := c.ByReason()
	if len(m) != len(Reasons()) || m[ReasonGCEvict] != c.Of(ReasonGCEvict) {
		t.Errorf("ByReason() = %v", m)
	}
}

func TestCountsArithmetic(t *testing.T) {
	var a, b Counts
	a.Add(ReasonTableFull, 10)
	a.Add(ReasonInsert, 3)
	b.Add(ReasonTableFull, 4)
	b.Add(ReasonInsert, 5)
	if got := a.Plus(b); got.Of(ReasonTableFull) != 14 || got.Of(ReasonInsert) != 8 {
		t.Errorf("Plus: %v", got)
	}
	if got := a.Minus(b); got.Of(ReasonTableFull) != 6 || got.Of(ReasonInsert) != 0 {
		t.Errorf("Minus must stop at zero: %v", got)
	}
	// Since: a counter below its previous reading restarted in between.
	if got := a.Since(b); got.Of(ReasonTableFull) != 6 || got.Of(ReasonInsert) != 3 {
		t.Errorf("Since: %v", got)
	}
	if !(Counts{}).IsZero() || a.IsZero() {
		t.Error("IsZero")
	}
}

func TestDetailCounts(t *testing.T) {
	var d DetailCounts
	for i, x := range Details() {
		d.Add(x, uint64(i+1))
	}
	if d.Of(DetailNone) != 0 {
		t.Errorf("DetailNone counted: %d", d.Of(DetailNone))
	}
	for i, x := range Details()[1:] {
		if d.Of(x) != uint64(i+2) {
			t.Errorf("Of(%s) = %d, want %d", x, d.Of(x), i+2)
		}
	}
}

// Deltas: what each key of a bounded map did between reads, a key pushed
// out and back (or whose counter restarted) counting all over again.
func TestDeltas(t *testing.T) {
	counts := func(n uint64) Counts {
		var c Counts
		c.Add(ReasonTableFull, n)
		return c
	}
	a, b := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	d := NewDeltas[netip.Addr](2)
	read := func(keys map[netip.Addr]uint64) (map[netip.Addr]uint64, int) {
		out := map[netip.Addr]uint64{}
		d.Begin()
		for k, n := range keys {
			out[k] = d.Since(k, counts(n)).Of(ReasonTableFull)
		}
		return out, d.End()
	}
	steps := []struct {
		map_  map[netip.Addr]uint64
		delta map[netip.Addr]uint64
		gone  int
	}{
		{map[netip.Addr]uint64{a: 5, b: 2}, map[netip.Addr]uint64{a: 5, b: 2}, 0},
		{map[netip.Addr]uint64{a: 9, b: 2}, map[netip.Addr]uint64{a: 4, b: 0}, 0},
		{map[netip.Addr]uint64{a: 9}, map[netip.Addr]uint64{a: 0}, 1},             // b pushed out
		{map[netip.Addr]uint64{a: 3, b: 7}, map[netip.Addr]uint64{a: 3, b: 7}, 0}, // a restarted, b back: all new
	}
	for i, s := range steps {
		got, gone := read(s.map_)
		for k, want := range s.delta {
			if got[k] != want {
				t.Errorf("read %d: %s did %d, want %d", i, k, got[k], want)
			}
		}
		if gone != s.gone {
			t.Errorf("read %d: %d keys gone, want %d", i, gone, s.gone)
		}
	}
}

// Quiet counts the reads in a row that found a key with nothing new, and
// Removed returns what a key did between its last read and its removal:
// together they let a reader remove only keys idle for a while, and lose
// nothing that landed meanwhile.
func TestDeltasQuietAndRemoved(t *testing.T) {
	var c Counts
	c.Add(ReasonTableFull, 4)
	k := netip.MustParseAddr("10.0.0.1")
	d := NewDeltas[netip.Addr](0)
	wantQuiet := []uint32{0, 1, 2}
	for i, want := range wantQuiet {
		d.Begin()
		d.Since(k, c)
		d.End()
		if q := d.Quiet(k); q != want {
			t.Fatalf("read %d: quiet %d, want %d", i, q, want)
		}
	}
	final := c
	final.Add(ReasonTableFull, 3)
	if late := d.Removed(k, final).Of(ReasonTableFull); late != 3 {
		t.Errorf("removed after 3 more: %d, want 3", late)
	}
	d.Begin()
	if n := d.Since(k, c).Of(ReasonTableFull); n != 4 {
		t.Errorf("back after removal: %d, want all 4 as new", n)
	}
	if gone := d.End(); gone != 0 {
		t.Errorf("removed key counted as pushed out: %d", gone)
	}
}
