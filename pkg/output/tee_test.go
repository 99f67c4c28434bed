package output

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/cttrace/cttrace/pkg/event"
)

// recorder is a Writer that keeps what it is given, failing when told.
type recorder struct {
	recs    []*event.Record
	flushes int
	err     error
}

func (r *recorder) Write(rec *event.Record) error {
	r.recs = append(r.recs, rec)
	return r.err
}

func (r *recorder) Flush() error {
	r.flushes++
	return r.err
}

// The main writer gets every record as it is; the file gets every record
// too, the summary included, as the JSON stream of the same records (in
// cttrace's schema or ECS), whatever the main writer shows.
func TestTeeCopiesEveryRecord(t *testing.T) {
	recs := everyRecord()
	recs = append(recs, &event.Record{Host: "elsewhere", Event: earlyDrop()})
	for _, ecs := range []bool{false, true} {
		var file, want bytes.Buffer
		main := &recorder{}
		tee := NewTee(main, &file, ecs)
		writeRecords(t, tee, recs...)
		if len(main.recs) != len(recs) || main.flushes != 1 {
			t.Fatalf("ecs %v: main got %d records and %d flushes, want %d and 1", ecs, len(main.recs), main.flushes, len(recs))
		}
		for i := range recs {
			if main.recs[i] != recs[i] {
				t.Errorf("ecs %v: main's record %d is not the one written", ecs, i)
			}
		}
		writeRecords(t, NewStream(&want, JSON, StreamOptions{ECS: ecs}), recs...)
		if file.String() != want.String() {
			t.Errorf("ecs %v: the file holds\n%s\nnot the JSON stream\n%s", ecs, file.String(), want.String())
		}
		if n, err := tee.Failures(); n != 0 || err != nil {
			t.Errorf("ecs %v: failures %d, %v with a working file", ecs, n, err)
		}
	}

	// A text screen shows no summary; the file keeps it.
	var screen, file bytes.Buffer
	writeRecords(t, NewTee(NewStream(&screen, Text, StreamOptions{}), &file, false), evRec(earlyDrop()), sumRec(summary()))
	if strings.Count(screen.String(), "\n") != 2 || strings.Contains(screen.String(), "fentry") {
		t.Errorf("screen: %q, want the header and one event", screen.String())
	}
	if lines := strings.Split(strings.TrimSuffix(file.String(), "\n"), "\n"); len(lines) != 2 || recordType(lines[1]) != "summary" {
		t.Errorf("file: %q, want the event and the summary", file.String())
	}
}

// The file's failures are counted, the first kept, and never reach the
// caller: the main output and the run go on.
func TestTeeCountsFileFailures(t *testing.T) {
	main := &recorder{}
	tee := NewTee(main, failingWriter{}, false)
	// The file's records are buffered: its first failure is at the flush,
	// and every write after it fails (bufio keeps the error).
	for _, r := range everyRecord()[:3] {
		if err := tee.Write(r); err != nil {
			t.Fatalf("Write failed with the file's error: %v", err)
		}
	}
	if n, err := tee.Failures(); n != 0 || err != nil {
		t.Errorf("failures %d, %v before anything reached the file", n, err)
	}
	if err := tee.Flush(); err != nil {
		t.Fatalf("Flush failed with the file's error: %v", err)
	}
	n, first := tee.Failures()
	if n != 1 || first == nil || first.Error() != "disk full" {
		t.Errorf("failures %d, %v after the flush, want 1, disk full", n, first)
	}
	for _, r := range everyRecord()[3:6] {
		if err := tee.Write(r); err != nil {
			t.Fatalf("Write failed with the file's error: %v", err)
		}
	}
	if err := tee.Flush(); err != nil {
		t.Fatalf("Flush failed with the file's error: %v", err)
	}
	if n, err := tee.Failures(); n != 5 || err != first {
		t.Errorf("failures %d, %v, want 5 and the first error kept", n, err)
	}
	if len(main.recs) != 6 || main.flushes != 2 {
		t.Errorf("main got %d records and %d flushes, want 6 and 2", len(main.recs), main.flushes)
	}
}

// The main writer's errors are the caller's; the file still gets the
// record, and the main writer's errors are not the file's failures.
func TestTeeMainErrorsReachTheCaller(t *testing.T) {
	boom := errors.New("closed pipe")
	var file bytes.Buffer
	tee := NewTee(&recorder{err: boom}, &file, false)
	if err := tee.Write(evRec(earlyDrop())); !errors.Is(err, boom) {
		t.Errorf("Write: %v, want %v", err, boom)
	}
	if err := tee.Flush(); !errors.Is(err, boom) {
		t.Errorf("Flush: %v, want %v", err, boom)
	}
	if n, err := tee.Failures(); n != 0 || err != nil {
		t.Errorf("failures %d, %v: the main writer's errors counted as the file's", n, err)
	}
	if recordType(strings.TrimSpace(file.String())) != "event" {
		t.Errorf("file: %q, want the event", file.String())
	}
}

// Failures may be read (a scrape) while the run writes.
func TestTeeFailuresWhileWriting(t *testing.T) {
	tee := NewTee(Discard, failingWriter{}, true)
	var wg sync.WaitGroup
	done := make(chan struct{})
	var seen []uint64
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			n, _ := tee.Failures()
			seen = append(seen, n)
			select {
			case <-done:
				return
			default:
			}
		}
	}()
	for range 200 {
		tee.Write(evRec(earlyDrop()))
		tee.Flush()
	}
	close(done)
	wg.Wait()
	// The first write is buffered; the first flush fails, and every write
	// and flush after it.
	if n, _ := tee.Failures(); n != 399 {
		t.Errorf("%d failures, want 399 (a write and a flush, 200 times, but the first write)", n)
	}
	if !slices.IsSorted(seen) {
		t.Errorf("failures went down while read")
	}
}
