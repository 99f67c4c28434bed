package top

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/topk"
)

func refusal(netns uint32, src string, at time.Time) *event.Event {
	return &event.Event{Time: at, Reason: event.ReasonTableFull, Netns: netns,
		Flow: event.Tuple{Src: netip.AddrPortFrom(netip.MustParseAddr(src), 1000)}}
}

// A replay counts as the kernel does: per source, with aggregates adding to
// the source they name and "other" aggregates only to the totals; and its
// bounded map, like the kernel's LRU, lets a heavy source that went quiet
// go while its counts stay in the history, so that it outranks a spoofed
// flood of one-drop sources far larger than the map.
func TestRecordingRanksAsTheKernelWould(t *testing.T) {
	g := topk.Grouping{V4Bits: 24, V6Bits: 64}
	rec := NewRecording(g, 100)
	start := time.Unix(1_700_000_000, 0)
	agg := newAggregator(t, Options{Sort: SortDrops, Limit: 2, Capacity: 100}, start)
	at := start
	for range 500 {
		rec.Event(refusal(7, "198.51.100.9", at)) // /24: one row with .10 below
	}
	rec.Aggregate(&event.Aggregate{Time: at, Reason: event.ReasonTableFull, Netns: 7, Source: netip.MustParseAddr("198.51.100.10"), Count: 100, Last: at})
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
	if len(snap.Rows) != 2 || snap.Rows[0].Prefix.String() != "198.51.100.0/24" || snap.Rows[0].Total.Drops != 600 {
		t.Fatalf("rows %+v: want 198.51.100.0/24 first with 600 drops", snap.Rows)
	}
	if total := snap.Rows[0].Total.Drops + snap.Rows[1].Total.Drops + snap.Other.Total.Drops; total != 10_640 {
		t.Errorf("rows + other = %d, want every refusal recorded (10,640)", total)
	}
	if len(snap.Namespaces) != 1 || snap.Namespaces[0].Total.Drops != 10_600 {
		t.Errorf("namespaces %+v: want netns 7 with 10,600 (the other aggregate names none)", snap.Namespaces)
	}
	if !snap.Bounded {
		t.Error("the map let sources go under the flood, yet the snapshot does not say it is bounded")
	}
}
