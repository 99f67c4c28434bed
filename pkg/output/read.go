package output

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"net/netip"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
)

// LineError is a line of a recorded stream that could not be decoded.
type LineError struct {
	Line int
	Err  error
}

func (e LineError) Error() string { return fmt.Sprintf("line %d: %v", e.Line, e.Err) }

// ReadRecords decodes a recorded stream (NDJSON in cttrace's schema, as
// `drops -o json` and --events-file write it) record by record. A line
// that is not a record of schema 1 is reported to bad and skipped; the
// sequence ends with an error only when reading r fails.
func ReadRecords(r io.Reader, bad func(LineError)) iter.Seq2[*event.Record, error] {
	return func(yield func(*event.Record, error) bool) {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for line := 1; sc.Scan(); line++ {
			if len(sc.Bytes()) == 0 {
				continue
			}
			rec, err := decodeRecord(sc.Bytes())
			if err != nil {
				bad(LineError{line, err})
				continue
			}
			if !yield(rec, nil) {
				return
			}
		}
		if err := sc.Err(); err != nil {
			yield(nil, fmt.Errorf("read recorded stream: %w", err))
		}
	}
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// decodeRecord reads one line into the wire type its type names, then
// back into the model.
func decodeRecord(b []byte) (*event.Record, error) {
	var h wireHeader
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, err
	}
	if h.Schema != SchemaVersion {
		return nil, fmt.Errorf("schema %d, not %d", h.Schema, SchemaVersion)
	}
	rec := &event.Record{Host: h.Host}
	var err error
	switch h.Type {
	case "event":
		var w wireEvent
		if err = json.Unmarshal(b, &w); err == nil {
			rec.Event, err = w.event()
		}
	case "aggregate":
		var w wireAggregate
		if err = json.Unmarshal(b, &w); err == nil {
			rec.Aggregate, err = w.aggregate()
		}
	case "lost":
		var w wireLost
		if err = json.Unmarshal(b, &w); err == nil {
			rec.Lost = &event.Lost{Time: time.Time(w.Time), Lost: w.Lost, Total: w.LostTotal}
		}
	case "summary":
		var w wireSummary
		if err = json.Unmarshal(b, &w); err == nil {
			rec.Summary = w.summary()
		}
	default:
		err = fmt.Errorf("unknown record type %q", h.Type)
	}
	if err != nil {
		return nil, err
	}
	return rec, nil
}

// The wire → model conversions; json.go has the way there.

func (w *wireEvent) event() (*event.Event, error) {
	r := event.Reason(w.Reason)
	if !r.Valid() {
		return nil, fmt.Errorf("unknown reason %q", w.Reason)
	}
	e := &event.Event{Time: time.Time(w.Time), Reason: r, Detail: event.Detail(w.Detail), Confidence: event.Confidence(w.Confidence),
		CPU: w.CPU, Netns: netnsOf(w.Netns, w.NetnsID), Zone: w.Zone, Count: w.Count, Max: w.Max, Status: w.StatusBits,
		TimeoutLeft: time.Duration(w.TimeoutLeftMs) * time.Millisecond}
	var err error
	if e.Flow, err = w.wireFlow.tuple(); err != nil {
		return nil, err
	}
	if w.TCPState != "" {
		e.TCPState, _ = event.ParseTCPState(w.TCPState)
	}
	if w.Trigger != nil {
		tr, err := w.Trigger.tuple()
		if err != nil {
			return nil, fmt.Errorf("trigger: %w", err)
		}
		e.Trigger = &tr
	}
	return e, nil
}

func (f *wireFlow) tuple() (event.Tuple, error) {
	if f.Family == "" {
		return event.Tuple{}, nil
	}
	src, dst := netip.Addr(f.Src), netip.Addr(f.Dst)
	if !src.IsValid() || !dst.IsValid() {
		return event.Tuple{}, errors.New("flow without its addresses")
	}
	return event.Tuple{Family: f.Family, Proto: f.ProtoNum, Src: netip.AddrPortFrom(src, f.Sport), Dst: netip.AddrPortFrom(dst, f.Dport)}, nil
}

func (w *wireAggregate) aggregate() (*event.Aggregate, error) {
	r := event.Reason(w.Reason)
	if !r.Valid() {
		return nil, fmt.Errorf("unknown reason %q", w.Reason)
	}
	a := &event.Aggregate{Time: time.Time(w.Time), Interval: time.Duration(float64(w.IntervalS) * float64(time.Second)), Reason: r,
		Netns: netnsOf(w.Netns, w.NetnsID), Count: w.Count, Last: time.Time(w.Last), Sampling: w.Sampling}
	if w.Src != otherSource {
		src, err := netip.ParseAddr(w.Src)
		if err != nil {
			return nil, err
		}
		a.Source = src
	}
	return a, nil
}

func (w *wireSummary) summary() *event.Summary {
	s := &event.Summary{Time: time.Time(w.Time), Backend: w.Backend, Events: event.Counts(w.Events), Lost: w.Lost,
		Aggregated: w.Aggregated, Duration: time.Duration(float64(w.DurationS) * float64(time.Second))}
	for _, r := range w.Visible {
		s.Visible = append(s.Visible, event.Reason(r))
	}
	return s
}

// netnsOf is a recorded namespace: its identity as recorded, or, in a
// recording made before records carried netns_id, its inode number
// standing in for it (no namespace, the "other" aggregate's, is zero).
func netnsOf(inode uint32, id uint64) event.Netns {
	switch {
	case id != 0:
		return event.Netns{ID: id, Inode: inode}
	case inode != 0:
		return event.NetnsOf(inode)
	}
	return event.Netns{}
}
