package output

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/cttrace/cttrace/pkg/event"
)

// jsonTime is RFC 3339 with a fixed nine-digit fraction, so that records
// sort as text and every consumer sees the same width.
const jsonTime = "2006-01-02T15:04:05.000000000Z07:00"

// JSONWriter writes newline-delimited JSON, one record per line. Records are
// built by hand into a reused buffer: encoding/json would reflect over every
// event, and an event storm is exactly when cttrace must keep up.
type JSONWriter struct {
	// Host is written in every record (this machine's name by default),
	// so that a SIEM gathering many hosts' streams can tell them apart.
	Host string
	w    *bufio.Writer
	buf  []byte
}

// NewJSON returns a JSONWriter buffering into w. Call Flush to write out.
func NewJSON(w io.Writer) *JSONWriter {
	host, _ := os.Hostname()
	return &JSONWriter{Host: host, w: bufio.NewWriterSize(w, 64<<10), buf: make([]byte, 0, 1024)}
}

// Event writes one "event" record. An event whose reason or confidence is
// not one the schema lists is refused rather than written: consumers rely on
// the schema's enums, and such an event can only come from a bug.
func (j *JSONWriter) Event(e *event.Event) error {
	if !e.Reason.Valid() {
		return fmt.Errorf("write json event: unknown reason %q", e.Reason)
	}
	if e.Confidence != event.ConfidenceExact && e.Confidence != event.ConfidenceInferred {
		return fmt.Errorf("write json event: unknown confidence %q", e.Confidence)
	}
	b := j.begin("event", e.Time)
	b = append(b, `,"reason":`...)
	b = appendJSONString(b, string(e.Reason))
	b = append(b, `,"detail":`...)
	b = appendJSONString(b, string(e.Detail))
	b = append(b, `,"confidence":`...)
	b = appendJSONString(b, string(e.Confidence))
	b = appendUintField(b, "cpu", uint64(e.CPU))
	b = appendUintField(b, "netns", uint64(e.Netns))
	b = appendUintField(b, "zone", uint64(e.Zone))
	b = appendUintField(b, "count", uint64(e.Count))
	b = appendUintField(b, "max", uint64(e.Max))
	b = append(b, ',')
	b = appendTupleFields(b, &e.Flow)
	b = append(b, `,"status":[`...)
	for bit, s := 0, e.Status; s != 0; bit, s = bit+1, s>>1 {
		if s&1 != 0 {
			if b[len(b)-1] != '[' {
				b = append(b, ',')
			}
			b = appendJSONString(b, event.StatusBitName(bit))
		}
	}
	b = append(b, ']')
	b = appendUintField(b, "status_bits", uint64(e.Status))
	b = append(b, `,"tcp_state":`...)
	b = appendJSONString(b, e.TCPStateName())
	b = append(b, `,"timeout_left_ms":`...)
	b = strconv.AppendInt(b, e.TimeoutLeft.Milliseconds(), 10)
	b = append(b, `,"trigger":`...)
	if e.Trigger == nil || !e.Trigger.Valid() {
		b = append(b, "null"...)
	} else {
		b = append(b, '{')
		b = appendTupleFields(b, e.Trigger)
		b = append(b, '}')
	}
	return j.end(b)
}

// Lost writes one "lost" record.
func (j *JSONWriter) Lost(n, total uint64, t time.Time) error {
	b := j.begin("lost", t)
	b = appendUintField(b, "lost", n)
	b = appendUintField(b, "lost_total", total)
	return j.end(b)
}

// Aggregate writes one "aggregate" record: a source's events past the
// stream limit in the last interval, or the rest ("src":"other").
func (j *JSONWriter) Aggregate(a *event.Aggregate) error {
	if !a.Reason.Valid() {
		return fmt.Errorf("write json aggregate: unknown reason %q", a.Reason)
	}
	b := j.begin("aggregate", a.Time)
	b = append(b, `,"reason":`...)
	b = appendJSONString(b, string(a.Reason))
	b = appendUintField(b, "netns", uint64(a.Netns))
	b = append(b, `,"family":`...)
	src := "other"
	switch {
	case a.IsOther():
		b = appendJSONString(b, "")
	case a.Source.Unmap().Is4():
		b = appendJSONString(b, "ipv4")
		src = a.Source.Unmap().String()
	default:
		b = appendJSONString(b, "ipv6")
		src = a.Source.String()
	}
	b = append(b, `,"src":`...)
	b = appendJSONString(b, src)
	b = appendUintField(b, "count", a.Count)
	b = append(b, `,"interval_s":`...)
	b = strconv.AppendFloat(b, a.Interval.Seconds(), 'f', 3, 64)
	b = append(b, `,"last":`...)
	if a.Last.IsZero() {
		b = append(b, `""`...)
	} else {
		b = append(b, '"')
		b = a.Last.UTC().AppendFormat(b, jsonTime)
		b = append(b, '"')
	}
	b = appendUintField(b, "sampling", a.Sampling)
	return j.end(b)
}

// Summary writes the "summary" record, with a count for every reason.
func (j *JSONWriter) Summary(s Summary) error {
	b := j.begin("summary", s.Time)
	b = append(b, `,"backend":`...)
	b = appendJSONString(b, s.Backend)
	b = append(b, `,"events":{`...)
	for i, r := range event.Reasons() {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, string(r))
		b = append(b, ':')
		b = strconv.AppendUint(b, s.Events[r], 10)
	}
	b = append(b, `},"visible":[`...)
	for i, r := range s.Visible {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, string(r))
	}
	b = append(b, ']')
	b = appendUintField(b, "lost", s.Lost)
	b = appendUintField(b, "aggregated", s.Aggregated)
	b = append(b, `,"duration_s":`...)
	b = strconv.AppendFloat(b, s.Duration.Seconds(), 'f', 3, 64)
	return j.end(b)
}

// Flush writes out the buffered records.
func (j *JSONWriter) Flush() error { return j.w.Flush() }

// begin starts a record with the fields every record has.
func (j *JSONWriter) begin(typ string, t time.Time) []byte {
	b := append(j.buf[:0], `{"schema":`...)
	b = strconv.AppendInt(b, SchemaVersion, 10)
	b = append(b, `,"type":"`...)
	b = append(b, typ...)
	b = append(b, `","time":"`...)
	b = t.UTC().AppendFormat(b, jsonTime)
	b = append(b, `","host":`...)
	b = appendJSONString(b, j.Host)
	return b
}

// end closes the record and hands it to the buffer, keeping the grown
// scratch buffer for the next record.
func (j *JSONWriter) end(b []byte) error {
	b = append(b, '}', '\n')
	j.buf = b
	_, err := j.w.Write(b)
	return err
}

// appendTupleFields writes a flow's fields, without braces: the event's flow
// sits at the top level, the trigger in an object of its own. A missing flow
// (family 0 from the kernel) is written with empty strings and zeros.
func appendTupleFields(b []byte, t *event.Tuple) []byte {
	b = append(b, `"family":`...)
	b = appendJSONString(b, t.Family)
	b = append(b, `,"proto":`...)
	if t.Valid() {
		b = appendJSONString(b, t.ProtoName())
	} else {
		b = append(b, `""`...)
	}
	b = appendUintField(b, "proto_num", uint64(t.Proto))
	b = append(b, `,"src":`...)
	b = appendAddr(b, t, t.Src)
	b = appendUintField(b, "sport", uint64(t.Src.Port()))
	b = append(b, `,"dst":`...)
	b = appendAddr(b, t, t.Dst)
	b = appendUintField(b, "dport", uint64(t.Dst.Port()))
	return b
}

// appendAddr writes an address as a JSON string; addresses need no escaping.
func appendAddr(b []byte, t *event.Tuple, ap netip.AddrPort) []byte {
	b = append(b, '"')
	if t.Valid() {
		b = ap.Addr().AppendTo(b)
	}
	return append(b, '"')
}

func appendUintField(b []byte, name string, v uint64) []byte {
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, '"', ':')
	return strconv.AppendUint(b, v, 10)
}

// appendJSONString quotes s for JSON. The names cttrace writes are plain
// ASCII and are copied as they are; anything else (a backend name from the
// command line) is escaped, and invalid UTF-8 becomes U+FFFD as
// encoding/json would make it.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		b = append(b, s[start:i]...)
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
			i++
		case c < 0x20:
			b = appendControl(b, c)
			i++
		default:
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				b = append(b, `\ufffd`...)
			} else {
				b = append(b, s[i:i+size]...)
			}
			i += size
		}
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

func appendControl(b []byte, c byte) []byte {
	switch c {
	case '\n':
		return append(b, '\\', 'n')
	case '\r':
		return append(b, '\\', 'r')
	case '\t':
		return append(b, '\\', 't')
	}
	const hex = "0123456789abcdef"
	return append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
}
