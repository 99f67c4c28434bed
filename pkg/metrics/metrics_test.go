package metrics

import (
	"maps"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/top"
)

func TestHealthyFollowsTheReadingLoop(t *testing.T) {
	e := New("tracepoint", 3, nil)
	now := time.Now()
	if e.Healthy(now, time.Minute) {
		t.Error("healthy before any reading")
	}
	// A reading stamped long ago (a late tick) still shows the loop is alive.
	e.Update(&Reading{Time: now.Add(-time.Hour)})
	if !e.Healthy(time.Now(), 10*time.Second) {
		t.Error("not healthy right after a reading was handed over")
	}
	if e.Healthy(time.Now().Add(11*time.Second), 10*time.Second) {
		t.Error("healthy 11 s after the last reading, with a 10 s window")
	}
}

func nsCounts(events map[event.Reason]uint64, details map[event.Detail]uint64) event.NamespaceCounts {
	var c event.NamespaceCounts
	for r, n := range events {
		c.Events.Add(r, n)
	}
	for d, n := range details {
		c.Details.Add(d, n)
	}
	return c
}

// gather collects e's metrics named name, by their labels' values in the
// order labels lists them, space-separated.
func gather(t *testing.T, e *Exporter, name string, labels ...string) map[string]float64 {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(e)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.Metric {
			values := map[string]string{}
			for _, l := range m.Label {
				values[l.GetName()] = l.GetValue()
			}
			key := ""
			for i, l := range labels {
				if i > 0 {
					key += " "
				}
				key += values[l]
			}
			v := m.GetCounter().GetValue()
			if m.Gauge != nil {
				v = m.GetGauge().GetValue()
			}
			got[key] = v
		}
	}
	return got
}

// Each reason's events are split by detail, the rest under detail="", so
// that a sum by reason is the kernel's total for it. Every reason has its
// detail="" series in every namespace, at 0 too: a series that stays.
func TestEventsByReasonAndDetail(t *testing.T) {
	e := New("fentry", 3, nil)
	e.Update(&Reading{Namespaces: map[event.Netns]event.NamespaceCounts{
		{ID: 4097, Inode: 7}: nsCounts(map[event.Reason]uint64{event.ReasonInsertFailed: 5, event.ReasonTableFull: 3},
			map[event.Detail]uint64{event.DetailClash: 2, event.DetailChainTooLong: 1}),
		// More detail than events (counters read a moment apart): the
		// rest is 0, never below.
		event.NetnsOf(9): nsCounts(map[event.Reason]uint64{event.ReasonDelete: 1},
			map[event.Detail]uint64{event.DetailNetlink: 3}),
	}})
	got := gather(t, e, "cttrace_events_total", "netns", "reason", "detail", "confidence")
	want := map[string]float64{
		"7 insert_failed clash exact":          2,
		"7 insert_failed chain_too_long exact": 1,
		"7 insert_failed  exact":               2,
		"7 table_full  exact":                  3,
		"9 delete netlink exact":               3,
		"9 delete  exact":                      0,
	}
	for _, netns := range []string{"7", "9"} {
		for _, r := range event.Reasons() {
			if k := netns + " " + string(r) + "  exact"; !hasKey(want, k) {
				want[k] = 0
			}
		}
	}
	if !maps.Equal(got, want) {
		t.Errorf("cttrace_events_total:\n%v\nwant\n%v", got, want)
	}
}

// The tracepoint backend's reasons are inferred.
func TestEventsConfidence(t *testing.T) {
	e := New("tracepoint", 3, nil)
	e.Update(&Reading{Namespaces: map[event.Netns]event.NamespaceCounts{
		event.NetnsOf(1): nsCounts(map[event.Reason]uint64{event.ReasonTableFull: 4}, nil)}})
	got := gather(t, e, "cttrace_events_total", "netns", "reason", "detail", "confidence")
	if got["1 table_full  inferred"] != 4 || len(got) != len(event.Reasons()) {
		t.Errorf("cttrace_events_total: %v", got)
	}
}

// Each namespace's top sources by drops, at most topN, with the entries
// they hold (never below 0), and "other" with the rest of its drops.
func TestSourcesTopNAndOther(t *testing.T) {
	drops := func(n uint64, held int64) top.Counts {
		var c top.Counts
		c.Events.Add(event.ReasonTableFull, n)
		c.Events.Add(event.ReasonInsert, 100) // not drops
		c.Held = held
		return c
	}
	row := func(netns event.Netns, src string, n uint64, held int64) top.Row {
		return top.Row{Key: top.Key{Netns: netns, Prefix: netip.MustParsePrefix(src)}, Total: drops(n, held)}
	}
	seven, eight := event.Netns{ID: 4097, Inode: 7}, event.NetnsOf(8)
	snap := &top.Snapshot{
		Namespaces: []top.Namespace{{Netns: seven, Total: drops(20, 0)}, {Netns: eight, Total: drops(0, 0)}},
		Rows: []top.Row{
			row(seven, "10.0.0.3/32", 1, 9), // sorted by drops in the exporter, not here
			row(seven, "10.0.0.1/32", 10, 4),
			row(seven, "10.0.0.2/32", 6, -2),
			row(eight, "10.0.0.4/32", 0, 50), // no drops: not shown
		},
	}
	e := New("fentry", 2, nil)
	e.Update(&Reading{Snapshot: snap})
	wantDrops := map[string]float64{"7 10.0.0.1/32": 10, "7 10.0.0.2/32": 6, "7 other": 4, "8 other": 0}
	if got := gather(t, e, "cttrace_source_drops_total", "netns", "source"); !maps.Equal(got, wantDrops) {
		t.Errorf("cttrace_source_drops_total: %v, want %v", got, wantDrops)
	}
	wantEntries := map[string]float64{"7 10.0.0.1/32": 4, "7 10.0.0.2/32": 0}
	if got := gather(t, e, "cttrace_source_entries", "netns", "source"); !maps.Equal(got, wantEntries) {
		t.Errorf("cttrace_source_entries: %v, want %v", got, wantEntries)
	}
}

func hasKey(m map[string]float64, k string) bool {
	_, ok := m[k]
	return ok
}
