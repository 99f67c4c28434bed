package top

import (
	"errors"
	"iter"
	"net/netip"
	"testing"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
)

// records is an in-memory recording, as output.ReadRecords would yield it.
func records(rs ...*event.Record) iter.Seq2[*event.Record, error] {
	return func(yield func(*event.Record, error) bool) {
		for _, r := range rs {
			if !yield(r, nil) {
				return
			}
		}
	}
}

// replayAll replays rs with o and returns every snapshot shown.
func replayAll(t *testing.T, o Options, rs iter.Seq2[*event.Record, error]) []Snapshot {
	t.Helper()
	var shown []Snapshot
	err := Replay(rs, o, func(s *Snapshot) error {
		shown = append(shown, *s)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return shown
}

// drops is the snapshot's rows + other: what it says was refused in all.
func drops(s *Snapshot) uint64 {
	n := s.Other.Total.Drops()
	for _, r := range s.Rows {
		n += r.Total.Drops()
	}
	return n
}

// A recording over 3.6 s of its own time, at 1 s intervals: records at
// 0, 0.5, 1.2 (an aggregate), 1.3 (a loss, not counted), 3.5 (an event,
// and an "other" aggregate) and a summary at 3.6 naming the backend, then
// an event at 3.55 from a CPU read late.
func replayRecording(t0 time.Time) iter.Seq2[*event.Record, error] {
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	return records(
		&event.Record{Event: refusal(7, "10.0.0.1", ms(0))},
		&event.Record{Event: refusal(7, "10.0.0.2", ms(500))},
		&event.Record{Aggregate: &event.Aggregate{Time: ms(1200), Interval: time.Second, Reason: event.ReasonTableFull,
			Netns: event.NetnsOf(7), Source: netip.MustParseAddr("10.0.0.1"), Count: 5, Last: ms(1150), Sampling: 1}},
		&event.Record{Lost: &event.Lost{Time: ms(1300), Lost: 3, Total: 3}},
		&event.Record{Event: refusal(8, "10.0.0.3", ms(3500))},
		&event.Record{Aggregate: &event.Aggregate{Time: ms(3500), Interval: time.Second, Reason: event.ReasonTableFull, Count: 4}},
		&event.Record{Summary: &event.Summary{Time: ms(3600), Backend: "fentry"}},
		&event.Record{Event: refusal(7, "10.0.0.2", ms(3550))},
	)
}

// Replay gives a snapshot at every interval of the recording's own time
// that has records after it (the interval from 2 s to 3 s has none, so no
// snapshot at 3 s), with what was recorded before it, and one at the end
// (the latest record's time, whichever came last) with everything; rows +
// other are the recorded totals in each.
func TestReplaySnapshotsEveryIntervalOfTheRecording(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	o := Options{Sort: SortDrops, Limit: 10, Capacity: 100, Grouping: DefaultGrouping, Interval: time.Second}
	shown := replayAll(t, o, replayRecording(t0))
	want := []struct {
		at       time.Duration
		interval time.Duration
		drops    uint64
		backend  string
	}{
		{time.Second, time.Second, 2, "replay"},
		{2 * time.Second, time.Second, 7, "replay"},
		{3600 * time.Millisecond, 1600 * time.Millisecond, 13, "fentry"},
	}
	if len(shown) != len(want) {
		for _, s := range shown {
			t.Logf("snapshot at %v: %d drops", s.Time.Sub(t0), drops(&s))
		}
		t.Fatalf("%d snapshots, want %d", len(shown), len(want))
	}
	for i, w := range want {
		s := &shown[i]
		if !s.Time.Equal(t0.Add(w.at)) || s.Interval != w.interval || drops(s) != w.drops || s.Backend != w.backend || s.Sort != SortDrops {
			t.Errorf("snapshot %d: at %v, interval %v, %d drops, backend %q, sort %q; want at %v, %v, %d, %q, %q",
				i, s.Time.Sub(t0), s.Interval, drops(s), s.Backend, s.Sort, w.at, w.interval, w.drops, w.backend, SortDrops)
		}
	}
	last := &shown[len(shown)-1]
	got := map[string][2]uint64{}
	for _, r := range last.Rows {
		got[r.Prefix.String()] = [2]uint64{r.Total.Drops(), r.Rate.Drops()}
	}
	wantRows := map[string][2]uint64{"10.0.0.1/32": {6, 0}, "10.0.0.2/32": {2, 1}, "10.0.0.3/32": {1, 1}}
	if len(got) != len(wantRows) || got["10.0.0.1/32"] != wantRows["10.0.0.1/32"] || got["10.0.0.2/32"] != wantRows["10.0.0.2/32"] ||
		got["10.0.0.3/32"] != wantRows["10.0.0.3/32"] {
		t.Errorf("last rows (total, rate) %v, want %v", got, wantRows)
	}
	if last.Rows[0].Prefix.String() != "10.0.0.1/32" {
		t.Errorf("first row %v, want 10.0.0.1/32 (6 drops)", last.Rows[0].Prefix)
	}
	if last.Other.Total.Drops() != 4 || last.Other.Rate.Drops() != 4 {
		t.Errorf("other %d drops (%d in the interval), want the other aggregate's 4", last.Other.Total.Drops(), last.Other.Rate.Drops())
	}
	ns := map[event.Netns]uint64{}
	for _, n := range last.Namespaces {
		ns[n.Netns] = n.Total.Drops()
	}
	if len(ns) != 2 || ns[event.NetnsOf(7)] != 8 || ns[event.NetnsOf(8)] != 1 {
		t.Errorf("namespaces %v, want 7: 8 and 8: 1 (the other aggregate names none)", ns)
	}
}

// With Once, Replay shows only the last snapshot, over the whole recording.
func TestReplayOnceShowsTheEnd(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	o := Options{Sort: SortInserts, Limit: 2, Capacity: 100, Interval: time.Second, Once: true}
	shown := replayAll(t, o, replayRecording(t0))
	if len(shown) != 1 {
		t.Fatalf("%d snapshots, want 1", len(shown))
	}
	s := &shown[0]
	if !s.Time.Equal(t0.Add(3600*time.Millisecond)) || s.Interval != 3600*time.Millisecond || drops(s) != 13 ||
		s.Backend != "fentry" || s.Sort != SortInserts || len(s.Rows) != 2 {
		t.Errorf("at %v, interval %v, %d drops, backend %q, sort %q, %d rows; want 3.6s, 3.6s, 13, fentry, inserts, 2 (the limit)",
			s.Time.Sub(t0), s.Interval, drops(s), s.Backend, s.Sort, len(s.Rows))
	}
	if s.Other.Rate.Drops()+s.Rows[0].Rate.Drops()+s.Rows[1].Rate.Drops() != 13 {
		t.Errorf("the one interval's drops do not add up to the recording's 13: %+v, other %+v", s.Rows, s.Other)
	}
}

func TestReplayErrors(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	o := Options{Sort: SortDrops, Limit: 10, Capacity: 100, Interval: time.Second}

	if shown := replayAll(t, o, records()); len(shown) != 0 {
		t.Errorf("an empty recording showed %d snapshots", len(shown))
	}

	stop := errors.New("stop")
	calls := 0
	err := Replay(replayRecording(t0), o, func(*Snapshot) error { calls++; return stop })
	if !errors.Is(err, stop) || calls != 1 {
		t.Errorf("show failing: Replay returned %v after %d calls, want its error after 1", err, calls)
	}

	bad := errors.New("malformed record")
	broken := func(yield func(*event.Record, error) bool) {
		if yield(&event.Record{Event: refusal(7, "10.0.0.1", t0)}, nil) {
			yield(nil, bad)
		}
	}
	calls = 0
	err = Replay(broken, o, func(*Snapshot) error { calls++; return nil })
	if !errors.Is(err, bad) || calls != 0 {
		t.Errorf("reading failing: Replay returned %v after %d snapshots, want its error and none", err, calls)
	}
}
