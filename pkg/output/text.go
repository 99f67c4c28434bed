package output

import (
	"bufio"
	"io"
	"strconv"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
)

// Column widths of the text format. A value wider than its column (an IPv6
// address, a count in the millions) pushes the rest of its line right
// rather than being cut: a truncated address is worse than a ragged line.
const (
	widthTime   = 15 // 15:04:05.000000
	widthReason = 15 // clash_resolved plus the inferred mark
	widthProto  = 7  // udplite
	widthAddr   = 21 // 255.255.255.255:65535
	widthNetns  = 10 // inode numbers are 10 digits (4026531840...)
	widthCount  = 13 // 262144/262144, a common nf_conntrack_max
)

// textTime is the time of day with microseconds, as conntrack -E and
// tcpdump print it; a session long enough to cross midnight is rare enough
// not to spend eleven columns on the date.
const textTime = "15:04:05.000000"

// inferredMark follows the reason of an event whose cause was deduced, not
// seen (confidence "inferred"): "table_full?". It sits on the reason, where
// the doubt applies, and `grep table_full` still finds the line.
const inferredMark = '?'

// textWriter writes one aligned line per record for people, after a header
// line printed before the first.
type textWriter struct {
	utc bool // times in UTC instead of the local time zone (--utc)

	w       *bufio.Writer
	buf     []byte
	scratch []byte
	header  bool // written
}

func newText(w io.Writer) *textWriter {
	return &textWriter{w: bufio.NewWriterSize(w, 32<<10), buf: make([]byte, 0, 256), scratch: make([]byte, 0, 64)}
}

// Write writes one record's line; a summary is not a line of the stream
// (NewStream).
func (t *textWriter) Write(r *event.Record) error {
	switch {
	case r.Event != nil:
		return t.event(r.Event)
	case r.Aggregate != nil:
		return t.aggregate(r.Aggregate)
	case r.Lost != nil:
		return t.lost(r.Lost)
	}
	return nil
}

// event writes one event line: time, reason, protocol, the flow, the
// network namespace, the table's fill and the detail. For an early_drop
// the flow is the evicted entry and the detail names the flow it made room
// for ("for udp 10.0.0.1:5000 → 10.0.0.2:53").
func (t *textWriter) event(e *event.Event) error {
	b, err := t.beginLine(e.Time, e.Reason, e.Confidence == event.ConfidenceInferred)
	if err != nil {
		return err
	}
	start := len(b)
	if e.Flow.Valid() {
		b = append(b, e.Flow.ProtoName()...)
	} else {
		b = append(b, '-')
	}
	b = pad(b, start, widthProto)

	b = t.appendFlow(b, &e.Flow)

	start = len(b)
	b = strconv.AppendUint(b, uint64(e.Netns.Inode), 10)
	b = pad(b, start, widthNetns)

	start = len(b)
	b = appendFill(b, e.Count, e.Max)
	b = pad(b, start, widthCount)

	b = append(b, e.Detail...)
	if e.Trigger != nil && e.Trigger.Valid() {
		if e.Detail != "" {
			b = append(b, ' ')
		}
		b = append(b, "for "...)
		b = appendTuple(b, e.Trigger)
	}
	return t.writeLine(b)
}

// beginLine starts a record's line, after the header if it is the first:
// its time, then its reason ("table_full?" when inferred), padded.
func (t *textWriter) beginLine(at time.Time, r event.Reason, inferred bool) ([]byte, error) {
	if err := t.writeHeader(); err != nil {
		return nil, err
	}
	b := t.appendTime(t.buf[:0], at)
	b = append(b, ' ')
	start := len(b)
	b = append(b, r...)
	if inferred {
		b = append(b, inferredMark)
	}
	return pad(b, start, widthReason), nil
}

// lost writes a line saying how many events the kernel could not deliver.
func (t *textWriter) lost(l *event.Lost) error {
	if err := t.writeHeader(); err != nil {
		return err
	}
	b := t.appendTime(t.buf[:0], l.Time)
	b = append(b, " -- lost "...)
	b = strconv.AppendUint(b, l.Lost, 10)
	if l.Lost == 1 {
		b = append(b, " event"...)
	} else {
		b = append(b, " events"...)
	}
	b = append(b, " (kernel ring buffer full; "...)
	b = strconv.AppendUint(b, l.Total, 10)
	b = append(b, " in all)"...)
	return t.writeLine(b)
}

// aggregate writes a line counting a source's events past the stream
// limit in the last interval:
//
//	00:18:53.000001 table_full      ×4021 from 127.9.0.3 in netns 4026532176 in the last 1s (past --stream-limit)
func (t *textWriter) aggregate(a *event.Aggregate) error {
	b, err := t.beginLine(a.Time, a.Reason, false)
	if err != nil {
		return err
	}
	b = append(b, "×"...)
	b = strconv.AppendUint(b, a.Count, 10)
	if a.IsOther() {
		b = append(b, " from other sources"...)
	} else {
		b = append(b, " from "...)
		b = a.Source.Unmap().AppendTo(b)
		b = append(b, " in netns "...)
		b = strconv.AppendUint(b, uint64(a.Netns.Inode), 10)
	}
	b = append(b, " in the last "...)
	b = append(b, a.Interval.Round(time.Millisecond).String()...)
	b = append(b, " (past --stream-limit"...)
	if a.Sampling > 1 {
		b = append(b, "; new sources sampled 1 in "...)
		b = strconv.AppendUint(b, a.Sampling, 10)
	}
	b = append(b, ')')
	return t.writeLine(b)
}

// WriteSummaryText writes a run's totals for people, as a short block:
//
//	-- 1m0.5s with backend fentry
//	events: table_full=3 alloc_failed=0 early_drop=1 insert_failed=1 lost=0
//
// Only the reasons the backend could see are listed: a person is not shown
// zeros for what was not visible (the JSON summary keeps every reason, as
// its schema says).
func WriteSummaryText(w io.Writer, s *event.Summary) error {
	t := newText(w)
	if err := t.summary(s); err != nil {
		return err
	}
	return t.Flush()
}

func (t *textWriter) summary(s *event.Summary) error {
	b := append(t.buf[:0], "-- "...)
	b = append(b, s.Duration.Round(time.Millisecond).String()...)
	if s.Backend != "" {
		b = append(b, " with backend "...)
		b = append(b, s.Backend...)
	}
	b = append(b, "\nevents:"...)
	for _, r := range event.Reasons() {
		if !s.Sees(r) {
			continue
		}
		b = append(b, ' ')
		b = append(b, r...)
		b = append(b, '=')
		b = strconv.AppendUint(b, s.Events.Of(r), 10)
	}
	b = append(b, " lost="...)
	b = strconv.AppendUint(b, s.Lost, 10)
	if s.Aggregated > 0 {
		b = append(b, " aggregated="...)
		b = strconv.AppendUint(b, s.Aggregated, 10)
	}
	return t.writeLine(b)
}

// Flush writes out the buffered lines.
func (t *textWriter) Flush() error { return t.w.Flush() }

func (t *textWriter) writeHeader() error {
	if t.header {
		return nil
	}
	t.header = true
	b := t.buf[:0]
	start := len(b)
	if t.utc {
		b = append(b, "TIME (UTC)"...)
	} else {
		b = append(b, "TIME"...)
	}
	b = pad(b, start, widthTime)
	start = len(b)
	b = append(b, "REASON"...)
	b = pad(b, start, widthReason)
	start = len(b)
	b = append(b, "PROTO"...)
	b = pad(b, start, widthProto)
	b = padLeft(b, []byte("SOURCE"), widthAddr)
	b = append(b, " → "...)
	start = len(b)
	b = append(b, "DESTINATION"...)
	b = pad(b, start, widthAddr)
	start = len(b)
	b = append(b, "NETNS"...)
	b = pad(b, start, widthNetns)
	start = len(b)
	b = append(b, "COUNT/MAX"...)
	b = pad(b, start, widthCount)
	b = append(b, "DETAIL"...)
	return t.writeLine(b)
}

func (t *textWriter) appendTime(b []byte, at time.Time) []byte {
	if t.utc {
		at = at.UTC()
	} else {
		at = at.Local()
	}
	return at.AppendFormat(b, textTime)
}

// appendFlow writes "source → destination" with the source right-aligned,
// so the arrows line up and each side reads as one column.
func (t *textWriter) appendFlow(b []byte, f *event.Tuple) []byte {
	if !f.Valid() {
		b = padLeft(b, []byte("-"), widthAddr)
		b = append(b, " → "...)
		start := len(b)
		b = append(b, '-')
		return pad(b, start, widthAddr)
	}
	t.scratch = f.AppendEndpoint(t.scratch[:0], f.Src)
	b = padLeft(b, t.scratch, widthAddr)
	b = append(b, " → "...)
	start := len(b)
	b = f.AppendEndpoint(b, f.Dst)
	return pad(b, start, widthAddr)
}

// writeLine ends a line, dropping the spaces padding left after the last
// column, and buffers it.
func (t *textWriter) writeLine(b []byte) error {
	for len(b) > 0 && b[len(b)-1] == ' ' {
		b = b[:len(b)-1]
	}
	b = append(b, '\n')
	t.buf = b
	_, err := t.w.Write(b)
	return err
}

// appendFill writes the table's fill, "count/max", with "-" for what the
// kernel did not know (it sends 0 then).
func appendFill(b []byte, count, max uint32) []byte {
	if count == 0 && max == 0 {
		return append(b, '-')
	}
	b = appendOrDash(b, count)
	b = append(b, '/')
	return appendOrDash(b, max)
}

func appendOrDash(b []byte, v uint32) []byte {
	if v == 0 {
		return append(b, '-')
	}
	return strconv.AppendUint(b, uint64(v), 10)
}

// appendTuple writes "udp 10.0.0.1:5000 → 10.0.0.2:53" without padding.
func appendTuple(b []byte, f *event.Tuple) []byte {
	b = append(b, f.ProtoName()...)
	b = append(b, ' ')
	b = f.AppendEndpoint(b, f.Src)
	b = append(b, " → "...)
	return f.AppendEndpoint(b, f.Dst)
}

// pad fills the column begun at start to width and adds the one-space
// separator; a value already as wide still gets the separator.
func pad(b []byte, start, width int) []byte {
	for n := runeCount(b[start:]); n < width; n++ {
		b = append(b, ' ')
	}
	return append(b, ' ')
}

// padLeft writes s right-aligned in width columns.
func padLeft(b, s []byte, width int) []byte {
	for n := runeCount(s); n < width; n++ {
		b = append(b, ' ')
	}
	return append(b, s...)
}

// runeCount counts columns: everything written is ASCII but the arrow.
func runeCount(b []byte) int {
	n := 0
	for _, c := range b {
		if c&0xc0 != 0x80 {
			n++
		}
	}
	return n
}
