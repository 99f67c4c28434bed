package output

import (
	"bytes"
	"strings"
	"testing"
)

// A recorded stream read back and written again is the same stream, byte
// for byte: the decoder loses nothing the schema carries. Malformed lines
// are reported with their numbers and skipped.
func TestReadRecordsRoundTrip(t *testing.T) {
	recorded := writeJSON(t, func(w *JSONWriter) error {
		for _, e := range everyReason() {
			if err := w.Event(e); err != nil {
				return err
			}
		}
		w.Event(earlyDrop())
		w.Aggregate(aggregate())
		w.Lost(5, 12, t0)
		return w.Summary(summary())
	})
	in := strings.Join(recorded[:3], "\n") + "\nnot json\n" + `{"schema":2,"type":"event"}` + "\n" + strings.Join(recorded[3:], "\n") + "\n"
	var out bytes.Buffer
	w := NewJSON(&out)
	w.Host = "cttrace-test"
	var bad []LineError
	err := ReadRecords(strings.NewReader(in), func(r *Record) error {
		switch {
		case r.Event != nil:
			return w.Event(r.Event)
		case r.Aggregate != nil:
			return w.Aggregate(r.Aggregate)
		case r.Lost != nil:
			return w.Lost(r.Lost.Lost, r.Lost.Total, r.Lost.Time)
		case r.Summary != nil:
			return w.Summary(*r.Summary)
		}
		return nil
	}, func(e LineError) { bad = append(bad, e) })
	if err != nil {
		t.Fatal(err)
	}
	w.Flush()
	if got, want := out.String(), strings.Join(recorded, "\n")+"\n"; got != want {
		t.Errorf("written again:\n%s\nrecorded:\n%s", got, want)
	}
	if len(bad) != 2 || bad[0].Line != 4 || bad[1].Line != 5 || !strings.Contains(bad[1].Error(), "schema 2") {
		t.Errorf("malformed lines: %v", bad)
	}
}

// FuzzReadRecords: a recorded stream of any content decodes or is
// reported line by line, never a panic.
func FuzzReadRecords(f *testing.F) {
	for _, l := range writeJSON(f, func(w *JSONWriter) error {
		w.Event(earlyDrop())
		w.Aggregate(aggregate())
		w.Lost(1, 2, t0)
		return w.Summary(summary())
	}) {
		f.Add(l)
	}
	f.Add(`{"schema":1,"type":"event","time":"x"}`)
	f.Add(`{"schema":1,"type":"aggregate","time":"2025-01-01T00:00:00Z","reason":"table_full","src":"::1","last":"y"}`)
	f.Fuzz(func(t *testing.T, line string) {
		ReadRecords(strings.NewReader(line), func(*Record) error { return nil }, func(LineError) {})
	})
}
