package top

import (
	"fmt"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
)

func refusal(netns uint32, src string, at time.Time) *event.Event {
	return &event.Event{Time: at, Reason: event.ReasonTableFull, Netns: event.NetnsOf(netns),
		Flow: event.Tuple{Src: netip.AddrPortFrom(netip.MustParseAddr(src), 1000)}}
}

// A replay counts as the kernel does: per source, with aggregates adding to
// the source they name and "other" aggregates only to the totals; and its
// bounded map, like the kernel's LRU, lets a heavy source that went quiet
// go while its counts stay in the history, so that it outranks a spoofed
// flood of one-drop sources far larger than the map.
func TestRecordingRanksAsTheKernelWould(t *testing.T) {
	g := Grouping{V4Bits: 24, V6Bits: 64}
	rec := NewRecording(g, 100)
	start := time.Unix(1_700_000_000, 0)
	agg := newRanking(t, Options{Sort: SortDrops, Limit: 2, Capacity: 100, Grouping: g}, start)
	at := start
	for range 500 {
		rec.Event(refusal(7, "198.51.100.9", at)) // /24: one row with .10 below
	}
	rec.Aggregate(&event.Aggregate{Time: at, Reason: event.ReasonTableFull, Netns: event.NetnsOf(7), Source: netip.MustParseAddr("198.51.100.10"), Count: 100, Last: at})
	rec.Aggregate(&event.Aggregate{Time: at, Reason: event.ReasonTableFull, Count: 40}) // other
	if _, err := agg.Snapshot(at.Add(time.Second), rec, nil); err != nil {
		t.Fatal(err)
	}
	// The flood: 10,000 sources once each, 100 times the map's capacity.
	for i := range 10_000 {
		at = at.Add(time.Millisecond)
		rec.Event(refusal(7, fmt.Sprintf("10.%d.%d.1", i/256, i%256), at))
		if i%100 == 99 {
			if _, err := agg.Snapshot(at, rec, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	snap, err := agg.Snapshot(at.Add(time.Second), rec, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(rec.sources) > 100 {
		t.Errorf("the recording holds %d sources, over its capacity 100", len(rec.sources))
	}
	if len(snap.Rows) != 2 || snap.Rows[0].Prefix.String() != "198.51.100.0/24" || snap.Rows[0].Total.Drops() != 600 {
		t.Fatalf("rows %+v: want 198.51.100.0/24 first with 600 drops", snap.Rows)
	}
	if total := snap.Rows[0].Total.Drops() + snap.Rows[1].Total.Drops() + snap.Other.Total.Drops(); total != 10_640 {
		t.Errorf("rows + other = %d, want every refusal recorded (10,640)", total)
	}
	if len(snap.Namespaces) != 1 || snap.Namespaces[0].Total.Drops() != 10_600 {
		t.Errorf("namespaces %+v: want netns 7 with 10,600 (the other aggregate names none)", snap.Namespaces)
	}
	if !snap.Bounded {
		t.Error("the map let sources go under the flood, yet the snapshot does not say it is bounded")
	}
}

// The per-namespace counts of a replay are the kernel's: every reason,
// and every detail apart (which path evicted, why an insert failed, what
// deleted), each in its namespace. An aggregate has no detail: its events
// count under the reason only. An "other" aggregate names no namespace and
// counts in the totals only; an unknown reason counts nowhere.
func TestRecordingCountsDetailsPerNamespace(t *testing.T) {
	rec := NewRecording(DefaultGrouping, 10)
	at := time.Unix(1_700_000_000, 0)
	want := map[event.Netns]event.NamespaceCounts{}
	var wantTotals event.Counts
	record := func(netns uint32, src string, r event.Reason, d event.Detail, n int) {
		for range n {
			ev := refusal(netns, src, at)
			ev.Reason, ev.Detail = r, d
			rec.Event(ev)
		}
		ns := want[event.NetnsOf(netns)]
		ns.Events.Add(r, uint64(n))
		ns.Details.Add(d, uint64(n))
		want[event.NetnsOf(netns)] = ns
		wantTotals.Add(r, uint64(n))
	}
	record(1, "10.0.0.1", event.ReasonInsertFailed, event.DetailClash, 2)
	record(1, "10.0.0.1", event.ReasonInsertFailed, event.DetailChainTooLong, 1)
	record(1, "10.0.0.2", event.ReasonInsertFailed, event.DetailNone, 1)
	record(1, "10.0.0.2", event.ReasonEarlyDrop, event.DetailEvictedForNewFlow, 3)
	record(1, "10.0.0.3", event.ReasonDelete, event.DetailExpired, 4)
	record(2, "10.0.0.1", event.ReasonGCEvict, event.DetailEvictedByGC, 5)
	record(2, "10.0.0.1", event.ReasonDelete, event.DetailNetlink, 6)
	record(2, "10.0.0.4", event.ReasonDelete, event.DetailOther, 1)
	record(2, "10.0.0.4", event.ReasonInsertFailed, event.DetailDying, 2)
	record(2, "10.0.0.4", event.ReasonTableFull, event.DetailNone, 7)

	rec.Aggregate(&event.Aggregate{Time: at, Reason: event.ReasonInsertFailed, Netns: event.NetnsOf(1),
		Source: netip.MustParseAddr("10.0.0.1"), Count: 10, Last: at})
	ns1 := want[event.NetnsOf(1)]
	ns1.Events.Add(event.ReasonInsertFailed, 10)
	want[event.NetnsOf(1)] = ns1
	wantTotals.Add(event.ReasonInsertFailed, 10)
	rec.Aggregate(&event.Aggregate{Time: at, Reason: event.ReasonTableFull, Count: 40}) // other
	wantTotals.Add(event.ReasonTableFull, 40)
	// The other aggregate names no namespace: it counts under the zero
	// Netns, which the ranking puts in its totals and on no line.
	none := want[event.Netns{}]
	none.Events.Add(event.ReasonTableFull, 40)
	want[event.Netns{}] = none
	bogus := refusal(1, "10.0.0.1", at)
	bogus.Reason, bogus.Detail = "no_such_reason", event.DetailClash
	rec.Event(bogus)

	got, err := rec.NamespaceCounts()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("namespaces:\n got %+v\nwant %+v", got, want)
	}
	// Spot checks of the figures above, so that the test does not only
	// compare two results of DetailCounts.Add.
	if d := got[event.NetnsOf(1)].Details; d.Of(event.DetailClash) != 2 || d.Of(event.DetailChainTooLong) != 1 || d.Of(event.DetailEvictedForNewFlow) != 3 ||
		d.Of(event.DetailExpired) != 4 || d.Of(event.DetailEvictedByGC) != 0 || d.Of(event.DetailNetlink) != 0 {
		t.Errorf("netns 1 details %+v", d)
	}
	if e := got[event.NetnsOf(1)].Events; e.Of(event.ReasonInsertFailed) != 14 || e.Of(event.ReasonEarlyDrop) != 3 || e.Of(event.ReasonDelete) != 4 {
		t.Errorf("netns 1 events %+v: want 14 insert_failed (4 events, an aggregate of 10), 3 early_drop, 4 delete", e)
	}
	if d := got[event.NetnsOf(2)].Details; d.Of(event.DetailEvictedByGC) != 5 || d.Of(event.DetailNetlink) != 6 || d.Of(event.DetailOther) != 1 ||
		d.Of(event.DetailDying) != 2 || d.Of(event.DetailClash) != 0 || d.Of(event.DetailExpired) != 0 {
		t.Errorf("netns 2 details %+v", d)
	}
	if e := got[event.NetnsOf(2)].Events; e.Of(event.ReasonGCEvict) != 5 || e.Of(event.ReasonDelete) != 7 || e.Of(event.ReasonTableFull) != 7 {
		t.Errorf("netns 2 events %+v", e)
	}
	// The totals (every event, the other aggregate's too) are the sum of
	// the namespaces' counts, as the ranking takes them.
	var totals event.Counts
	for _, c := range got {
		totals = totals.Plus(c.Events)
	}
	if totals != wantTotals || totals.Of(event.ReasonTableFull) != 47 {
		t.Errorf("totals %+v, want %+v (the other aggregate's 40 table_full in them)", totals, wantTotals)
	}
	// The caller's copy is its own.
	got[event.NetnsOf(1)] = event.NamespaceCounts{}
	delete(got, event.NetnsOf(2))
	if again, _ := rec.NamespaceCounts(); !reflect.DeepEqual(again, want) {
		t.Errorf("changing the returned counts changed the recording's: %+v", again)
	}
}
