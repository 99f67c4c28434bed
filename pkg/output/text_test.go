package output

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output differs from %s (go test -update rewrites it):\n--- got\n%s--- want\n%s", path, got, want)
	}
}

func newTextUTC(w *bytes.Buffer) Writer[*event.Record] {
	return NewStream(w, Text, StreamOptions{UTC: true})
}

func TestTextGolden(t *testing.T) {
	var out bytes.Buffer
	recs := evRecs([]*event.Event{ipv4TableFull(), ipv6InsertFailed(), earlyDrop(), inferredTableFull(), gcEviction()})
	recs = append(recs, lostRec(17, 17, t0.Add(5*time.Millisecond)), lostRec(1, 18, t0.Add(6*time.Millisecond)), aggRec(aggregate()),
		aggRec(&event.Aggregate{Time: t0, Interval: time.Second, Reason: event.ReasonTableFull, Count: 250000, Sampling: 64}),
		// Not a line of the text stream: the summary goes to stderr.
		sumRec(summary()))
	writeRecords(t, newTextUTC(&out), recs...)
	golden(t, "text.golden", out.Bytes())

	// The summary goes to a writer of its own (stderr), without a header.
	var sum bytes.Buffer
	if err := WriteSummaryText(&sum, summary()); err != nil {
		t.Fatal(err)
	}
	golden(t, "text-summary.golden", sum.Bytes())
}

// A text stream has no summary line, not even a header for one.
func TestTextStreamWritesNoSummary(t *testing.T) {
	var out bytes.Buffer
	writeRecords(t, newTextUTC(&out), sumRec(summary()), &event.Record{Host: "elsewhere", Summary: summary()})
	if out.Len() != 0 {
		t.Errorf("a summary in the text stream wrote %q", out.String())
	}
}

func TestTextColumnsAlign(t *testing.T) {
	var out bytes.Buffer
	writeRecords(t, newTextUTC(&out), evRecs([]*event.Event{ipv4TableFull(), earlyDrop(), inferredTableFull()})...)
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 4 {
		t.Fatalf("got %d lines, want header and 3", len(lines))
	}
	// Every IPv4 line has its arrow and netns in the header's columns.
	arrow := strings.Index(lines[0], "→")
	netns := strings.Index(lines[0], "NETNS")
	for _, l := range lines[1:] {
		if i := strings.Index(l, "→"); i != arrow {
			t.Errorf("arrow at byte %d, header's at %d:\n%s\n%s", i, arrow, lines[0], l)
		}
		if !strings.HasPrefix(l[netns:], "40265") {
			t.Errorf("netns not under NETNS:\n%s\n%s", lines[0], l)
		}
	}
}

func TestTextLocalTime(t *testing.T) {
	saved := time.Local
	time.Local = time.FixedZone("TEST", 2*3600)
	t.Cleanup(func() { time.Local = saved })

	var out bytes.Buffer
	writeRecords(t, NewStream(&out, Text, StreamOptions{}), evRec(ipv4TableFull()))
	lines := strings.Split(out.String(), "\n")
	if !strings.HasPrefix(lines[0], "TIME ") || strings.Contains(lines[0], "UTC") {
		t.Errorf("header %q: want a plain TIME column", lines[0])
	}
	if !strings.HasPrefix(lines[1], "01:41:07.123456 table_full ") {
		t.Errorf("line %q: want local time 01:41:07.123456", lines[1])
	}
}

func TestTextHeaderOnce(t *testing.T) {
	var out bytes.Buffer
	writeRecords(t, NewStream(&out, Text, StreamOptions{}), lostRec(3, 3, t0), evRec(ipv4TableFull()), evRec(ipv4TableFull()))
	if n := strings.Count(out.String(), "REASON"); n != 1 {
		t.Errorf("header written %d times:\n%s", n, out.String())
	}
	if !strings.HasPrefix(out.String(), "TIME") {
		t.Errorf("output does not start with the header:\n%s", out.String())
	}
}

// The text summary lists the reasons the backend sees, in the kernel's
// order, and no other: a count for a reason it cannot see is not shown.
func TestTextSummary(t *testing.T) {
	drops := []event.Reason{event.ReasonTableFull, event.ReasonAllocFailed, event.ReasonEarlyDrop, event.ReasonInsertFailed}
	visibleDrops := summary()
	visibleDrops.Visible = drops
	visibleDrops.Events.Add(event.ReasonInsert, 9) // not visible: not shown
	tracepoint := summary()
	tracepoint.Backend, tracepoint.Visible, tracepoint.Aggregated = "tracepoint", []event.Reason{event.ReasonTableFull, event.ReasonInsertFailed}, 250000
	tests := []struct {
		name string
		s    *event.Summary
		want string
	}{
		{"visible reasons only", visibleDrops,
			"-- 1m0.503s with backend fentry\nevents: table_full=2 alloc_failed=0 early_drop=2 insert_failed=1 lost=17\n"},
		{"every reason visible", summary(),
			"-- 1m0.503s with backend fentry\nevents: table_full=2 alloc_failed=0 early_drop=2 insert_failed=1 insert=0 delete=0 clash_resolved=0 gc_evict=0 lost=17\n"},
		{"kernel's order, no backend", &event.Summary{
			Events:  counts(map[event.Reason]uint64{event.ReasonClashResolved: 4, event.ReasonInsert: 1, event.ReasonDelete: 2, event.ReasonEarlyDrop: 8}),
			Visible: []event.Reason{event.ReasonClashResolved, event.ReasonInsert, event.ReasonDelete, event.ReasonTableFull}, Duration: 1500 * time.Microsecond},
			"-- 2ms\nevents: table_full=0 insert=1 delete=2 clash_resolved=4 lost=0\n"},
		{"aggregated", tracepoint,
			"-- 1m0.503s with backend tracepoint\nevents: table_full=2 insert_failed=1 lost=17 aggregated=250000\n"},
		{"nothing visible", &event.Summary{Backend: "kprobe", Events: counts(map[event.Reason]uint64{event.ReasonTableFull: 1})},
			"-- 0s with backend kprobe\nevents: lost=0\n"},
	}
	for _, tt := range tests {
		var out bytes.Buffer
		if err := WriteSummaryText(&out, tt.s); err != nil {
			t.Fatal(err)
		}
		if out.String() != tt.want {
			t.Errorf("%s: got\n%q\nwant\n%q", tt.name, out.String(), tt.want)
		}
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestWriteErrorsReachTheCaller(t *testing.T) {
	for name, w := range map[string]Writer[*event.Record]{
		"json": NewStream(failingWriter{}, JSON, StreamOptions{}),
		"ecs":  NewStream(failingWriter{}, JSON, StreamOptions{ECS: true}),
		"text": NewStream(failingWriter{}, Text, StreamOptions{}),
	} {
		if err := w.Write(evRec(ipv4TableFull())); err != nil {
			t.Fatalf("%s: buffered Write failed early: %v", name, err)
		}
		if err := w.Flush(); err == nil {
			t.Errorf("%s: Flush to a failing writer returned nil", name)
		}
		// bufio keeps the error: later writes fail too.
		if err := w.Write(evRec(ipv4TableFull())); err == nil {
			t.Errorf("%s: Write after a failed Flush returned nil", name)
		}
	}
	if err := WriteSummaryText(failingWriter{}, summary()); err == nil {
		t.Errorf("WriteSummaryText to a failing writer returned nil")
	}
}

func BenchmarkTextEvent(b *testing.B) {
	w := NewStream(discardWriter{}, Text, StreamOptions{})
	r := evRec(earlyDrop())
	b.ReportAllocs()
	for b.Loop() {
		if err := w.Write(r); err != nil {
			b.Fatal(err)
		}
	}
}

// discardWriter is io.Discard without its ReadFrom, so bufio really copies.
type discardWriter struct{}

func (discardWriter) Write(p []byte) (int, error) { return len(p), nil }
