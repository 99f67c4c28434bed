package metrics

import (
	"testing"
	"time"
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
