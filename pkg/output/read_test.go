package output

import (
	"bytes"
	"cmp"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/cttrace/cttrace/pkg/event"
)

// A recorded stream read back and written again is the same stream, byte
// for byte: the decoder loses nothing the schema carries, the host each
// record names included. Malformed lines are reported with their numbers
// and skipped.
func TestReadRecordsRoundTrip(t *testing.T) {
	recs := append(everyRecord(), evRec(earlyDrop()), aggRec(aggregate()), lostRec(5, 12, t0), sumRec(summary()))
	recs = append(recs, wireEdgeRecords()...)
	// Hosts vary record by record, as in a file gathered from many (the
	// edge records name hosts that need escaping).
	hosts := []string{"", "node-a", "node-b.example", "node-a"}
	var want []string
	for i, r := range recs {
		r := *r
		// Invalid UTF-8 is written as an escaped U+FFFD, as encoding/json
		// would, and read back as U+FFFD, which is written as it is: the
		// same string again, in other bytes. A recording holds valid UTF-8.
		r.Host = strings.ToValidUTF8(cmp.Or(r.Host, hosts[i%len(hosts)]), "\uFFFD")
		if r.Summary != nil {
			s := *r.Summary
			s.Backend = strings.ToValidUTF8(s.Backend, "\uFFFD")
			r.Summary = &s
		}
		recs[i] = &r
		want = append(want, r.Host)
	}
	var recorded bytes.Buffer
	writeRecords(t, NewStream(&recorded, JSON, StreamOptions{}), recs...)
	lines := strings.SplitAfter(recorded.String(), "\n")
	in := strings.Join(lines[:3], "") + "not json\n" + `{"schema":2,"type":"event"}` + "\n\n" + strings.Join(lines[3:], "")

	var out bytes.Buffer
	w := NewStream(&out, JSON, StreamOptions{})
	var bad []LineError
	var got []string
	for r, err := range ReadRecords(strings.NewReader(in), func(e LineError) { bad = append(bad, e) }) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, r.Host)
		if err := w.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if out.String() != recorded.String() {
		again := strings.SplitAfter(out.String(), "\n")
		for i := range min(len(again), len(lines)) {
			if again[i] != lines[i] {
				t.Fatalf("record %d written again:\n%srecorded:\n%s", i, again[i], lines[i])
			}
		}
		t.Fatalf("%d lines written again, %d recorded", len(again), len(lines))
	}
	// A record written without a host names this machine, as read back.
	here := NewStream(io.Discard, JSON, StreamOptions{}).(*jsonWriter).host
	for i := range want {
		if want[i] == "" {
			want[i] = here
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("hosts read back %q, want %q", got, want)
	}
	if len(bad) != 2 || bad[0].Line != 4 || bad[1].Line != 5 || !strings.Contains(bad[1].Error(), "schema 2") {
		t.Errorf("malformed lines: %v", bad)
	}
}

// What a record holds once read back: the model, not only the bytes.
func TestReadRecordsDecodes(t *testing.T) {
	e := earlyDrop()
	var in bytes.Buffer
	writeRecords(t, NewStream(&in, JSON, StreamOptions{}), &event.Record{Host: "node-a", Event: e}, sumRec(summary()))
	var recs []*event.Record
	for r, err := range ReadRecords(&in, func(e LineError) { t.Error(e) }) {
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, r)
	}
	if len(recs) != 2 {
		t.Fatalf("%d records read back, want 2", len(recs))
	}
	got := recs[0].Event
	if recs[0].Host != "node-a" || got == nil || !got.Time.Equal(e.Time) || got.Reason != e.Reason || got.Detail != e.Detail ||
		got.Flow != e.Flow || got.Trigger == nil || *got.Trigger != *e.Trigger || got.Status != e.Status ||
		got.TCPState != e.TCPState || got.TimeoutLeft != e.TimeoutLeft || got.Count != e.Count {
		t.Errorf("event read back as %+v (host %q), want %+v", got, recs[0].Host, e)
	}
	s, want := recs[1].Summary, summary()
	if s == nil || s.Events != want.Events || !slices.Equal(s.Visible, want.Visible) || s.Backend != want.Backend ||
		s.Lost != want.Lost || s.Duration.Milliseconds() != want.Duration.Milliseconds() {
		t.Errorf("summary read back as %+v, want %+v", s, want)
	}
}

// The sequence stops when the loop does, and ends with the reader's error.
func TestReadRecordsStopsAndFails(t *testing.T) {
	var in bytes.Buffer
	writeRecords(t, NewStream(&in, JSON, StreamOptions{}), evRec(earlyDrop()), lostRec(1, 1, t0), lostRec(2, 3, t0))
	n := 0
	for _, err := range ReadRecords(bytes.NewReader(in.Bytes()), func(LineError) {}) {
		if err != nil {
			t.Fatal(err)
		}
		if n++; n == 2 {
			break // the iterator must not call on: that panics
		}
	}

	boom := errors.New("boom")
	var recs int
	var errs []error
	for r, err := range ReadRecords(io.MultiReader(bytes.NewReader(in.Bytes()), iotest.ErrReader(boom)), func(LineError) {}) {
		if err != nil {
			if r != nil {
				t.Errorf("a record with the error: %+v", r)
			}
			errs = append(errs, err)
			continue
		}
		if len(errs) > 0 {
			t.Errorf("a record after the error")
		}
		recs++
	}
	if recs != 3 || len(errs) != 1 || !errors.Is(errs[0], boom) {
		t.Errorf("%d records and errors %v, want 3 and one wrapping %v", recs, errs, boom)
	}
}

// FuzzReadRecords: a recorded stream of any content decodes or is
// reported line by line, never a panic.
func FuzzReadRecords(f *testing.F) {
	for _, l := range writeJSON(f, evRec(earlyDrop()), aggRec(aggregate()), lostRec(1, 2, t0), sumRec(summary())) {
		f.Add(l)
	}
	f.Add(`{"schema":1,"type":"event","time":"x"}`)
	f.Add(`{"schema":1,"type":"aggregate","time":"2025-01-01T00:00:00Z","reason":"table_full","src":"::1","last":"y"}`)
	f.Fuzz(func(t *testing.T, line string) {
		for r, err := range ReadRecords(strings.NewReader(line), func(LineError) {}) {
			if err == nil && r == nil {
				t.Fatal("a nil record without an error")
			}
		}
	})
}
