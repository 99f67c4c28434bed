package metrics

import (
	"maps"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cttrace/cttrace/pkg/event"
)

func TestHealthyFollowsTheReadingLoop(t *testing.T) {
	e := New("tracepoint", 3)
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

// Each reason's events are split by detail, the rest under detail="", so
// that a sum by reason is the kernel's total for it.
func TestEventsByReasonAndDetail(t *testing.T) {
	e := New("fentry", 3)
	e.Update(&Reading{
		Events:  map[uint32]map[event.Reason]uint64{7: {event.ReasonInsertFailed: 5, event.ReasonTableFull: 3}},
		Details: map[uint32]map[event.Detail]uint64{7: {event.DetailClash: 2, event.DetailChainTooLong: 1}},
	})
	reg := prometheus.NewRegistry()
	reg.MustRegister(e)
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range fams {
		if f.GetName() != "cttrace_events_total" {
			continue
		}
		for _, m := range f.Metric {
			labels := map[string]string{}
			for _, l := range m.Label {
				labels[l.GetName()] = l.GetValue()
			}
			got[labels["netns"]+" "+labels["reason"]+" "+labels["detail"]+" "+labels["confidence"]] = m.GetCounter().GetValue()
		}
	}
	want := map[string]float64{
		"7 insert_failed clash exact":          2,
		"7 insert_failed chain_too_long exact": 1,
		"7 insert_failed  exact":               2,
		"7 table_full  exact":                  3,
	}
	if !maps.Equal(got, want) {
		t.Errorf("cttrace_events_total: %v, want %v", got, want)
	}
}
