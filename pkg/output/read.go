package output

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
)

// Record is one record of a recorded stream (cttrace's schema), decoded:
// exactly one of its pointers is set, by Type.
type Record struct {
	Type      string
	Host      string // the machine that wrote it
	Event     *event.Event
	Aggregate *event.Aggregate
	Lost      *LostReport
	Summary   *Summary
}

// Time is when the record was written: the event's, the end of the
// aggregate's interval, the loss's notice, the summary's.
func (r *Record) Time() time.Time {
	switch {
	case r.Event != nil:
		return r.Event.Time
	case r.Aggregate != nil:
		return r.Aggregate.Time
	case r.Lost != nil:
		return r.Lost.Time
	case r.Summary != nil:
		return r.Summary.Time
	}
	return time.Time{}
}

// LostReport is a "lost" record.
type LostReport struct {
	Time        time.Time
	Lost, Total uint64
}

// jsonTuple and jsonRecord mirror the schema (docs/drops-schema-v1.json).
type jsonTuple struct {
	Family   string `json:"family"`
	ProtoNum uint8  `json:"proto_num"`
	Src      string `json:"src"`
	Sport    uint16 `json:"sport"`
	Dst      string `json:"dst"`
	Dport    uint16 `json:"dport"`
}

type jsonRecord struct {
	Schema int    `json:"schema"`
	Type   string `json:"type"`
	Time   string `json:"time"`
	Host   string `json:"host"`
	jsonTuple
	Reason        string            `json:"reason"`
	Detail        string            `json:"detail"`
	Confidence    string            `json:"confidence"`
	CPU           uint32            `json:"cpu"`
	Netns         uint32            `json:"netns"`
	Zone          uint16            `json:"zone"`
	Count         uint64            `json:"count"`
	Max           uint32            `json:"max"`
	StatusBits    uint32            `json:"status_bits"`
	TCPState      string            `json:"tcp_state"`
	TimeoutLeftMs int64             `json:"timeout_left_ms"`
	Trigger       *jsonTuple        `json:"trigger"`
	IntervalS     float64           `json:"interval_s"`
	Last          string            `json:"last"`
	Sampling      uint64            `json:"sampling"`
	Lost          uint64            `json:"lost"`
	LostTotal     uint64            `json:"lost_total"`
	Backend       string            `json:"backend"`
	Events        map[string]uint64 `json:"events"`
	Visible       []string          `json:"visible"`
	Aggregated    uint64            `json:"aggregated"`
	DurationS     float64           `json:"duration_s"`
}

// LineError is a line of a recorded stream that could not be decoded.
type LineError struct {
	Line int
	Err  error
}

func (e LineError) Error() string { return fmt.Sprintf("line %d: %v", e.Line, e.Err) }

// ReadRecords decodes a recorded stream (NDJSON in cttrace's schema, as
// `drops -o json` and --events-file write it) and calls fn with each
// record. A line that is not a record of schema 1 is reported to bad and
// skipped; an error from fn or from reading r stops it.
func ReadRecords(r io.Reader, fn func(*Record) error, bad func(LineError)) error {
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
		if err := fn(rec); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read recorded stream: %w", err)
	}
	return nil
}

func decodeRecord(b []byte) (*Record, error) {
	var j jsonRecord
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, err
	}
	if j.Schema != SchemaVersion {
		return nil, fmt.Errorf("schema %d, not %d", j.Schema, SchemaVersion)
	}
	t, err := time.Parse(time.RFC3339Nano, j.Time)
	if err != nil {
		return nil, fmt.Errorf("time: %w", err)
	}
	rec := &Record{Type: j.Type, Host: j.Host}
	switch j.Type {
	case "event":
		rec.Event, err = j.event(t)
	case "aggregate":
		rec.Aggregate, err = j.aggregate(t)
	case "lost":
		rec.Lost = &LostReport{Time: t, Lost: j.Lost, Total: j.LostTotal}
	case "summary":
		rec.Summary = j.summary(t)
	default:
		err = fmt.Errorf("unknown record type %q", j.Type)
	}
	return rec, err
}

func (j *jsonRecord) event(t time.Time) (*event.Event, error) {
	r := event.Reason(j.Reason)
	if !r.Valid() {
		return nil, fmt.Errorf("unknown reason %q", j.Reason)
	}
	e := &event.Event{Time: t, Reason: r, Detail: event.Detail(j.Detail), Confidence: event.Confidence(j.Confidence),
		CPU: j.CPU, Netns: j.Netns, Zone: j.Zone, Count: uint32(j.Count), Max: j.Max, Status: j.StatusBits,
		TimeoutLeft: time.Duration(j.TimeoutLeftMs) * time.Millisecond}
	var err error
	if e.Flow, err = j.jsonTuple.tuple(); err != nil {
		return nil, err
	}
	if j.TCPState != "" {
		e.TCPState, _ = event.ParseTCPState(j.TCPState)
	}
	if j.Trigger != nil {
		tr, err := j.Trigger.tuple()
		if err != nil {
			return nil, fmt.Errorf("trigger: %w", err)
		}
		e.Trigger = &tr
	}
	return e, nil
}

func (t *jsonTuple) tuple() (event.Tuple, error) {
	if t.Family == "" {
		return event.Tuple{}, nil
	}
	src, err1 := netip.ParseAddr(t.Src)
	dst, err2 := netip.ParseAddr(t.Dst)
	if err := errors.Join(err1, err2); err != nil {
		return event.Tuple{}, err
	}
	return event.Tuple{Family: t.Family, Proto: t.ProtoNum, Src: netip.AddrPortFrom(src, t.Sport), Dst: netip.AddrPortFrom(dst, t.Dport)}, nil
}

func (j *jsonRecord) aggregate(t time.Time) (*event.Aggregate, error) {
	r := event.Reason(j.Reason)
	if !r.Valid() {
		return nil, fmt.Errorf("unknown reason %q", j.Reason)
	}
	a := &event.Aggregate{Time: t, Interval: time.Duration(j.IntervalS * float64(time.Second)), Reason: r, Netns: j.Netns,
		Count: j.Count, Sampling: j.Sampling}
	if j.Src != "other" {
		src, err := netip.ParseAddr(j.Src)
		if err != nil {
			return nil, err
		}
		a.Source = src
	}
	if j.Last != "" {
		last, err := time.Parse(time.RFC3339Nano, j.Last)
		if err != nil {
			return nil, fmt.Errorf("last: %w", err)
		}
		a.Last = last
	}
	return a, nil
}

func (j *jsonRecord) summary(t time.Time) *Summary {
	s := &Summary{Time: t, Backend: j.Backend, Events: map[event.Reason]uint64{}, Lost: j.Lost, Aggregated: j.Aggregated,
		Duration: time.Duration(j.DurationS * float64(time.Second))}
	for r, n := range j.Events {
		s.Events[event.Reason(r)] = n
	}
	for _, r := range j.Visible {
		s.Visible = append(s.Visible, event.Reason(r))
	}
	return s
}
