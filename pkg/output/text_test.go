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

func TestTextGolden(t *testing.T) {
	var out bytes.Buffer
	w := NewText(&out)
	w.UTC = true
	for _, e := range []*event.Event{ipv4TableFull(), ipv6InsertFailed(), earlyDrop(), inferredTableFull(), gcEviction()} {
		if err := w.Event(e); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Lost(17, 17, t0.Add(5*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if err := w.Lost(1, 18, t0.Add(6*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if err := w.Aggregate(aggregate()); err != nil {
		t.Fatal(err)
	}
	if err := w.Aggregate(&event.Aggregate{Time: t0, Interval: time.Second, Reason: event.ReasonTableFull, Count: 250000, Sampling: 64}); err != nil {
		t.Fatal(err)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	golden(t, "text.golden", out.Bytes())

	// The summary goes to a writer of its own (stderr), without a header.
	var sum bytes.Buffer
	s := NewText(&sum)
	if err := s.Summary(summary()); err != nil {
		t.Fatal(err)
	}
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	golden(t, "text-summary.golden", sum.Bytes())
}

func TestTextColumnsAlign(t *testing.T) {
	var out bytes.Buffer
	w := NewText(&out)
	w.UTC = true
	for _, e := range []*event.Event{ipv4TableFull(), earlyDrop(), inferredTableFull()} {
		if err := w.Event(e); err != nil {
			t.Fatal(err)
		}
	}
	w.Flush()
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
	w := NewText(&out)
	w.Event(ipv4TableFull())
	w.Flush()
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
	w := NewText(&out)
	w.Lost(3, 3, t0)
	w.Event(ipv4TableFull())
	w.Event(ipv4TableFull())
	w.Flush()
	if n := strings.Count(out.String(), "REASON"); n != 1 {
		t.Errorf("header written %d times:\n%s", n, out.String())
	}
	if !strings.HasPrefix(out.String(), "TIME") {
		t.Errorf("output does not start with the header:\n%s", out.String())
	}
}

func TestTextSummary(t *testing.T) {
	tests := []struct {
		name string
		s    Summary
		want string
	}{
		{"listed reasons only", summary(),
			"-- 1m0.503s with backend fentry\nevents: table_full=2 alloc_failed=0 early_drop=2 insert_failed=1 lost=17\n"},
		{"every reason, no backend", Summary{Events: map[event.Reason]uint64{
			event.ReasonClashResolved: 4, event.ReasonInsert: 1, event.ReasonDelete: 2, event.ReasonTableFull: 0}, Duration: 1500 * time.Microsecond},
			"-- 2ms\nevents: table_full=0 insert=1 delete=2 clash_resolved=4 lost=0\n"},
		{"nothing traced", Summary{Backend: "kprobe"},
			"-- 0s with backend kprobe\nevents: lost=0\n"},
	}
	for _, tt := range tests {
		var out bytes.Buffer
		w := NewText(&out)
		if err := w.Summary(tt.s); err != nil {
			t.Fatal(err)
		}
		w.Flush()
		if out.String() != tt.want {
			t.Errorf("%s: got\n%q\nwant\n%q", tt.name, out.String(), tt.want)
		}
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestWriteErrorsReachTheCaller(t *testing.T) {
	for name, w := range map[string]Writer{"json": NewJSON(failingWriter{}), "text": NewText(failingWriter{})} {
		if err := w.Event(ipv4TableFull()); err != nil {
			t.Fatalf("%s: buffered Event failed early: %v", name, err)
		}
		if err := w.Flush(); err == nil {
			t.Errorf("%s: Flush to a failing writer returned nil", name)
		}
		// bufio keeps the error: later writes fail too.
		if err := w.Event(ipv4TableFull()); err == nil {
			t.Errorf("%s: Event after a failed Flush returned nil", name)
		}
	}
}

func BenchmarkTextEvent(b *testing.B) {
	w := NewText(discard{})
	e := earlyDrop()
	b.ReportAllocs()
	for b.Loop() {
		if err := w.Event(e); err != nil {
			b.Fatal(err)
		}
	}
}

// discard is io.Discard without its ReadFrom, so bufio really copies.
type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
