package session

import (
	"errors"
	"testing"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/table"
)

// fakeHooks counts refusals and switches as the test says.
type fakeHooks struct {
	produced event.Counts
	on       bool
}

func (f *fakeHooks) Produced() (event.Counts, error) { return f.produced, nil }
func (f *fakeHooks) PerFlow() bool                   { return f.on }
func (f *fakeHooks) SetPerFlow(on bool) error        { f.on = on; return nil }

// The policy: attached at the first refusal, at the high mark or when the
// kernel's failure counters move, kept while a table stays above the low
// mark or refusals keep coming, and detached after the quiet period; a
// table hovering between the marks does not flap.
func TestPressurePolicy(t *testing.T) {
	const quiet = time.Minute
	fill := 0.0
	var failures int64
	pr := newPressure(quiet, DefaultFillHigh, nil, nil)
	pr.tables = func() (tablesReading, error) { return tablesReading{fill: fill, failures: failures}, nil }
	h := &fakeHooks{}
	t0 := time.Unix(1_000_000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	steps := []struct {
		name     string
		at       time.Duration
		fill     float64
		refused  uint64
		failures int64 // the kernel's drop, early_drop and insert_failed
		want     bool
	}{
		{"healthy, counters as found", 0, 0.50, 0, 7, false},
		{"hovering under the high mark", 2 * time.Second, 0.89, 0, 7, false},
		{"at the high mark", 4 * time.Second, 0.90, 0, 7, true},
		{"between the marks: kept", 4*time.Second + quiet, 0.85, 0, 7, true},
		{"below the low mark, not yet quiet", 5*time.Second + quiet, 0.70, 0, 7, true},
		{"quiet: detached", 5*time.Second + 2*quiet, 0.70, 0, 7, false},
		{"between the marks again: no flap", 7*time.Second + 2*quiet, 0.85, 0, 7, false},
		{"a refusal, table at 10 %", 9*time.Second + 2*quiet, 0.10, 1, 8, true},
		{"refusals keep it", 9*time.Second + 3*quiet - time.Second, 0.10, 2, 9, true},
		{"quiet after the last refusal", 9*time.Second + 4*quiet, 0.10, 2, 9, false},
		{"an insert failure only the kernel counted", 11*time.Second + 4*quiet, 0.10, 2, 10, true},
		{"quiet after it", 11*time.Second + 5*quiet, 0.10, 2, 10, false},
	}
	var switches uint64
	for _, s := range steps {
		fill, failures = s.fill, s.failures
		var c event.Counts
		c.Add(event.ReasonTableFull, s.refused)
		h.produced = c
		before := h.on
		if err := pr.check(h, at(s.at)); err != nil {
			t.Fatal(err)
		}
		if h.on != s.want {
			t.Errorf("%s: per-flow hooks %v, want %v", s.name, h.on, s.want)
		}
		if h.on != before {
			switches++
		}
	}
	if got := pr.switches.Load(); got != switches || switches != 6 {
		t.Errorf("switches counted %d, happened %d, want 6", got, switches)
	}
}

// A failed read of the tables is told once, not every second, and refusals
// still attach the per-flow hooks.
func TestPressureWarnsOnceWhenTablesCannotBeRead(t *testing.T) {
	var warned []error
	pr := newPressure(time.Minute, DefaultFillHigh, nil, func(err error) { warned = append(warned, err) })
	pr.tables = func() (tablesReading, error) { return tablesReading{}, errors.New("no netlink here") }
	h := &fakeHooks{}
	t0 := time.Unix(1_000_000, 0)
	for i := range 3 {
		if err := pr.check(h, t0.Add(time.Duration(i)*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if len(warned) != 1 || h.on {
		t.Fatalf("warned %v, hooks on %v: want one warning, hooks off", warned, h.on)
	}
	h.produced.Add(event.ReasonTableFull, 1)
	if err := pr.check(h, t0.Add(3*time.Second)); err != nil {
		t.Fatal(err)
	}
	if !h.on {
		t.Error("a refusal did not attach the per-flow hooks while the tables could not be read")
	}
}

// The fill is the fullest table's among those in use, of its max: a
// namespace not in use, one whose statistics could not be read and a max
// of 0 (unlimited) take no part; the failures add up over the rest.
func TestReadTables(t *testing.T) {
	scan := func() ([]table.NamespaceStats, error) {
		return []table.NamespaceStats{
			{InUse: true, Stats: table.Stats{Entries: 50, Max: 100, Drop: 2, EarlyDrop: 1}},
			{InUse: true, Stats: table.Stats{Entries: 70, Max: 100, InsertFailed: 4}},
			{InUse: false, Stats: table.Stats{Entries: 99, Max: 100, Drop: 100}},
			{InUse: true, Err: errors.New("no netlink"), Stats: table.Stats{Entries: 99, Max: 100}},
			{InUse: true, Stats: table.Stats{Entries: 10, Max: 0}},
		}, nil
	}
	r, err := readTables(scan)
	if err != nil {
		t.Fatal(err)
	}
	if r.fill != 0.70 || r.failures != 7 {
		t.Errorf("fill %.2f, failures %d: want 0.70 and 7", r.fill, r.failures)
	}
	if _, err := readTables(func() ([]table.NamespaceStats, error) { return nil, errors.New("no /proc") }); err == nil {
		t.Error("a failed scan read as tables")
	}
}
