package output

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
	"time"

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
		got.TCPState != e.TCPState || got.TimeoutLeft != e.TimeoutLeft || got.Count != e.Count || got.Netns != e.Netns {
		t.Errorf("event read back as %+v (host %q), want %+v", got, recs[0].Host, e)
	}
	s, want := recs[1].Summary, summary()
	if s == nil || s.Events != want.Events || !slices.Equal(s.Visible, want.Visible) || s.Backend != want.Backend ||
		s.Lost != want.Lost || s.Duration.Milliseconds() != want.Duration.Milliseconds() {
		t.Errorf("summary read back as %+v, want %+v", s, want)
	}
}

// A namespace is read back with its identity (netns_id) and its inode
// number (netns). A recording made before records carried netns_id is read
// with the inode number standing in for the identity (event.NetnsOf), as a
// kernel without netns cookies names a namespace; "other", no namespace,
// is the zero Netns, with netns_id or without. Written again, the old
// records gain the netns_id they were read with.
func TestReadRecordsNetns(t *testing.T) {
	old := []string{
		`{"schema":1,"type":"event","time":"2025-03-14T23:41:07.123456789Z","host":"edge-1","reason":"table_full","detail":"","confidence":"exact",` +
			`"cpu":3,"netns":4026532500,"zone":0,"count":1024,"max":1024,"family":"ipv4","proto":"udp","proto_num":17,` +
			`"src":"127.1.0.1","sport":40000,"dst":"127.0.0.1","dport":9,"status":[],"status_bits":0,"tcp_state":"","timeout_left_ms":0,"trigger":null}`,
		`{"schema":1,"type":"aggregate","time":"2025-03-14T23:41:07.123456789Z","host":"edge-1","reason":"table_full","netns":4026531840,"family":"ipv4","src":"203.0.113.7","count":4021,"interval_s":1.000,"last":"2025-03-14T23:41:07.122456789Z","sampling":1}`,
		`{"schema":1,"type":"aggregate","time":"2025-03-14T23:41:07.123456789Z","host":"edge-1","reason":"table_full","netns":0,"family":"","src":"other","count":250000,"interval_s":1.000,"last":"","sampling":64}`,
		`{"schema":1,"type":"event","time":"2025-03-14T23:41:07.123456789Z","host":"edge-1","reason":"alloc_failed","detail":"","confidence":"inferred",` +
			`"cpu":0,"netns":0,"zone":0,"count":0,"max":0,"family":"","proto":"","proto_num":0,` +
			`"src":"","sport":0,"dst":"","dport":0,"status":[],"status_bits":0,"tcp_state":"","timeout_left_ms":0,"trigger":null}`,
	}
	other := &event.Aggregate{Time: t0, Interval: time.Second, Reason: event.ReasonTableFull, Count: 250000, Sampling: 64}
	big := aggregate()
	big.Netns = event.Netns{ID: math.MaxUint64, Inode: math.MaxUint32}
	var current bytes.Buffer
	writeRecords(t, NewStream(&current, JSON, StreamOptions{}), evRec(ipv4TableFull()), aggRec(aggregate()), aggRec(other), aggRec(big),
		evRec(&event.Event{Time: t0, Reason: event.ReasonAllocFailed, Confidence: event.ConfidenceInferred}))
	in := strings.Join(old, "\n") + "\n" + current.String()
	want := []event.Netns{
		event.NetnsOf(4026532500), event.NetnsOf(4026531840), {}, {},
		podNetns, hostNetns, {}, {ID: math.MaxUint64, Inode: math.MaxUint32}, {},
	}
	var got []event.Netns
	var again bytes.Buffer
	w := NewStream(&again, JSON, StreamOptions{})
	for r, err := range ReadRecords(strings.NewReader(in), func(e LineError) { t.Error(e) }) {
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case r.Event != nil:
			got = append(got, r.Event.Netns)
		case r.Aggregate != nil:
			got = append(got, r.Aggregate.Netns)
			if r.Aggregate.IsOther() != (r.Aggregate.Netns == event.Netns{}) {
				t.Errorf("aggregate of %s read back with netns %+v", r.Aggregate.Source, r.Aggregate.Netns)
			}
		}
		if err := w.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("namespaces read back\n%+v\nwant\n%+v", got, want)
	}
	lines := strings.Split(again.String(), "\n")
	for i, add := range []string{`"netns":4026532500,"netns_id":9223372040881308308,`, `"netns":4026531840,"netns_id":9223372040881307648,`,
		`"netns":0,"netns_id":0,`, `"netns":0,"netns_id":0,`} {
		if want := strings.Replace(old[i], fmt.Sprintf(`"netns":%d,`, want[i].Inode), add, 1); lines[i] != want {
			t.Errorf("old record %d written again:\n%s\nwant\n%s", i, lines[i], want)
		}
	}
	if strings.Join(lines[len(old):], "\n") != current.String() {
		t.Errorf("current records written again:\n%s\nrecorded\n%s", strings.Join(lines[len(old):], "\n"), current.String())
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
