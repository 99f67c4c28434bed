package output

import (
	"bufio"
	"cmp"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/cttrace/cttrace/pkg/event"
)

// SchemaVersion is the NDJSON schema's version, written in every record.
// Fields are only ever added within a version; renaming or removing one, or
// changing its type or meaning, bumps it.
const SchemaVersion = 1

// The records of cttrace's schema (docs/drops.md,
// docs/drops-schema-v1.json), one wire type a kind. The writer below
// encodes them by hand, field by field in the order declared here, and the
// reader (read.go) decodes the same types with encoding/json: a replay
// reads exactly what a run wrote. TestJSONWireMatchesEncodingJSON holds
// the hand encoding to encoding/json's for the same values.
type (
	wireHeader struct {
		Schema int      `json:"schema"`
		Type   string   `json:"type"`
		Time   wireTime `json:"time"`
		Host   string   `json:"host"`
	}
	wireFlow struct {
		Family   string   `json:"family"`
		Proto    string   `json:"proto"`
		ProtoNum uint8    `json:"proto_num"`
		Src      wireAddr `json:"src"`
		Sport    uint16   `json:"sport"`
		Dst      wireAddr `json:"dst"`
		Dport    uint16   `json:"dport"`
	}
	wireEvent struct {
		wireHeader
		Reason     string `json:"reason"`
		Detail     string `json:"detail"`
		Confidence string `json:"confidence"`
		CPU        uint32 `json:"cpu"`
		Netns      uint32 `json:"netns"`
		NetnsID    uint64 `json:"netns_id"`
		Zone       uint16 `json:"zone"`
		Count      uint32 `json:"count"`
		Max        uint32 `json:"max"`
		wireFlow
		Status        wireStatus `json:"status"`
		StatusBits    uint32     `json:"status_bits"`
		TCPState      string     `json:"tcp_state"`
		TimeoutLeftMs int64      `json:"timeout_left_ms"`
		Trigger       *wireFlow  `json:"trigger"`
	}
	wireAggregate struct {
		wireHeader
		Reason    string      `json:"reason"`
		Netns     uint32      `json:"netns"`
		NetnsID   uint64      `json:"netns_id"`
		Family    string      `json:"family"`
		Src       string      `json:"src"` // an address, or "other"
		Count     uint64      `json:"count"`
		IntervalS wireSeconds `json:"interval_s"`
		Last      wireOptTime `json:"last"`
		Sampling  uint64      `json:"sampling"`
	}
	wireLost struct {
		wireHeader
		Lost      uint64 `json:"lost"`
		LostTotal uint64 `json:"lost_total"`
	}
	wireSummary struct {
		wireHeader
		Backend    string      `json:"backend"`
		Events     wireCounts  `json:"events"`
		Visible    []string    `json:"visible"`
		Lost       uint64      `json:"lost"`
		Aggregated uint64      `json:"aggregated"`
		DurationS  wireSeconds `json:"duration_s"`
	}
)

// otherSource is the src of the aggregate that names no source.
const otherSource = "other"

// jsonWriter writes cttrace's records as newline-delimited JSON, one a
// line. Records are built by hand into a reused buffer: encoding/json would
// reflect over every event, and an event storm is exactly when cttrace must
// keep up.
type jsonWriter struct {
	host    string // this machine's: written unless the record names another
	w       *bufio.Writer
	buf     []byte
	trigger wireFlow // the event's trigger points here: no allocation per event
}

func newJSON(w io.Writer) *jsonWriter {
	host, _ := os.Hostname()
	return &jsonWriter{host: host, w: bufio.NewWriterSize(w, 64<<10), buf: make([]byte, 0, 1024)}
}

// Write writes one record. An event whose reason or confidence is not one
// the schema lists is refused rather than written: consumers rely on the
// schema's enums, and such an event can only come from a bug.
func (j *jsonWriter) Write(r *event.Record) error {
	h := wireHeader{Schema: SchemaVersion, Time: wireTime(r.Time()), Host: cmp.Or(r.Host, j.host)}
	b := j.buf[:0]
	switch {
	case r.Event != nil:
		w, err := toWireEvent(h, r.Event, &j.trigger)
		if err != nil {
			return err
		}
		b = w.appendJSON(b)
	case r.Aggregate != nil:
		w, err := toWireAggregate(h, r.Aggregate)
		if err != nil {
			return err
		}
		b = w.appendJSON(b)
	case r.Lost != nil:
		w := toWireLost(h, r.Lost)
		b = w.appendJSON(b)
	case r.Summary != nil:
		w := toWireSummary(h, r.Summary)
		b = w.appendJSON(b)
	default:
		return nil
	}
	b = append(b, '\n')
	j.buf = b
	_, err := j.w.Write(b)
	return err
}

// Flush writes out the buffered records.
func (j *jsonWriter) Flush() error { return j.w.Flush() }

// The model → wire conversions; read.go has the way back.

// toWireEvent points the trigger, if any, at *trigger.
func toWireEvent(h wireHeader, e *event.Event, trigger *wireFlow) (wireEvent, error) {
	if !e.Reason.Valid() {
		return wireEvent{}, fmt.Errorf("write json event: unknown reason %q", e.Reason)
	}
	if e.Confidence != event.ConfidenceExact && e.Confidence != event.ConfidenceInferred {
		return wireEvent{}, fmt.Errorf("write json event: unknown confidence %q", e.Confidence)
	}
	h.Type = "event"
	w := wireEvent{wireHeader: h, Reason: string(e.Reason), Detail: string(e.Detail), Confidence: string(e.Confidence),
		CPU: e.CPU, Netns: e.Netns.Inode, NetnsID: e.Netns.ID, Zone: e.Zone, Count: e.Count, Max: e.Max, wireFlow: toWireFlow(&e.Flow),
		Status: wireStatus(e.Status), StatusBits: e.Status, TCPState: e.TCPStateName(), TimeoutLeftMs: e.TimeoutLeft.Milliseconds()}
	if e.Trigger != nil && e.Trigger.Valid() {
		*trigger = toWireFlow(e.Trigger)
		w.Trigger = trigger
	}
	return w, nil
}

// toWireFlow writes a missing flow (family 0 from the kernel) with empty
// strings and zeros.
func toWireFlow(t *event.Tuple) wireFlow {
	if !t.Valid() {
		return wireFlow{ProtoNum: t.Proto}
	}
	return wireFlow{Family: t.Family, Proto: t.ProtoName(), ProtoNum: t.Proto, Src: wireAddr(t.Src.Addr()), Sport: t.Src.Port(),
		Dst: wireAddr(t.Dst.Addr()), Dport: t.Dst.Port()}
}

func toWireAggregate(h wireHeader, a *event.Aggregate) (wireAggregate, error) {
	if !a.Reason.Valid() {
		return wireAggregate{}, fmt.Errorf("write json aggregate: unknown reason %q", a.Reason)
	}
	h.Type = "aggregate"
	w := wireAggregate{wireHeader: h, Reason: string(a.Reason), Netns: a.Netns.Inode, NetnsID: a.Netns.ID, Src: otherSource, Count: a.Count,
		IntervalS: wireSeconds(a.Interval.Seconds()), Last: wireOptTime(a.Last), Sampling: a.Sampling}
	switch src := a.Source.Unmap(); {
	case a.IsOther():
	case src.Is4():
		w.Family, w.Src = event.FamilyIPv4, src.String()
	default:
		w.Family, w.Src = event.FamilyIPv6, a.Source.String()
	}
	return w, nil
}

func toWireLost(h wireHeader, l *event.Lost) wireLost {
	h.Type = "lost"
	return wireLost{wireHeader: h, Lost: l.Lost, LostTotal: l.Total}
}

func toWireSummary(h wireHeader, s *event.Summary) wireSummary {
	h.Type = "summary"
	w := wireSummary{wireHeader: h, Backend: s.Backend, Events: wireCounts(s.Events), Visible: make([]string, 0, len(s.Visible)),
		Lost: s.Lost, Aggregated: s.Aggregated, DurationS: wireSeconds(s.Duration.Seconds())}
	for _, r := range s.Visible {
		w.Visible = append(w.Visible, string(r))
	}
	return w
}

// The hand encoding, one method a wire type, the fields in declared order.

func (h *wireHeader) appendJSON(b []byte) []byte {
	b = append(b, `{"schema":`...)
	b = strconv.AppendInt(b, int64(h.Schema), 10)
	b = appendStringField(b, "type", h.Type)
	b = append(b, `,"time":`...)
	b = h.Time.appendJSON(b)
	return appendStringField(b, "host", h.Host)
}

func (w *wireEvent) appendJSON(b []byte) []byte {
	b = w.wireHeader.appendJSON(b)
	b = appendStringField(b, "reason", w.Reason)
	b = appendStringField(b, "detail", w.Detail)
	b = appendStringField(b, "confidence", w.Confidence)
	b = appendUintField(b, "cpu", uint64(w.CPU))
	b = appendUintField(b, "netns", uint64(w.Netns))
	b = appendUintField(b, "netns_id", w.NetnsID)
	b = appendUintField(b, "zone", uint64(w.Zone))
	b = appendUintField(b, "count", uint64(w.Count))
	b = appendUintField(b, "max", uint64(w.Max))
	b = append(b, ',')
	b = w.wireFlow.appendFields(b)
	b = append(b, `,"status":`...)
	b = w.Status.appendJSON(b)
	b = appendUintField(b, "status_bits", uint64(w.StatusBits))
	b = appendStringField(b, "tcp_state", w.TCPState)
	b = append(b, `,"timeout_left_ms":`...)
	b = strconv.AppendInt(b, w.TimeoutLeftMs, 10)
	b = append(b, `,"trigger":`...)
	if w.Trigger == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '{')
		b = w.Trigger.appendFields(b)
		b = append(b, '}')
	}
	return append(b, '}')
}

// appendFields writes a flow's fields without braces: the event's flow
// sits at the top level, the trigger in an object of its own.
func (f *wireFlow) appendFields(b []byte) []byte {
	b = append(b, `"family":`...)
	b = appendJSONString(b, f.Family)
	b = appendStringField(b, "proto", f.Proto)
	b = appendUintField(b, "proto_num", uint64(f.ProtoNum))
	b = append(b, `,"src":`...)
	b = f.Src.appendJSON(b)
	b = appendUintField(b, "sport", uint64(f.Sport))
	b = append(b, `,"dst":`...)
	b = f.Dst.appendJSON(b)
	return appendUintField(b, "dport", uint64(f.Dport))
}

func (w *wireAggregate) appendJSON(b []byte) []byte {
	b = w.wireHeader.appendJSON(b)
	b = appendStringField(b, "reason", w.Reason)
	b = appendUintField(b, "netns", uint64(w.Netns))
	b = appendUintField(b, "netns_id", w.NetnsID)
	b = appendStringField(b, "family", w.Family)
	b = appendStringField(b, "src", w.Src)
	b = appendUintField(b, "count", w.Count)
	b = append(b, `,"interval_s":`...)
	b = w.IntervalS.appendJSON(b)
	b = append(b, `,"last":`...)
	b = w.Last.appendJSON(b)
	b = appendUintField(b, "sampling", w.Sampling)
	return append(b, '}')
}

func (w *wireLost) appendJSON(b []byte) []byte {
	b = w.wireHeader.appendJSON(b)
	b = appendUintField(b, "lost", w.Lost)
	b = appendUintField(b, "lost_total", w.LostTotal)
	return append(b, '}')
}

func (w *wireSummary) appendJSON(b []byte) []byte {
	b = w.wireHeader.appendJSON(b)
	b = appendStringField(b, "backend", w.Backend)
	b = append(b, `,"events":`...)
	b = w.Events.appendJSON(b)
	b = append(b, `,"visible":[`...)
	for i, r := range w.Visible {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, r)
	}
	b = append(b, ']')
	b = appendUintField(b, "lost", w.Lost)
	b = appendUintField(b, "aggregated", w.Aggregated)
	b = append(b, `,"duration_s":`...)
	b = w.DurationS.appendJSON(b)
	return append(b, '}')
}

// The wire's scalar types: each encodes itself the same way for the hand
// encoder and for encoding/json (MarshalJSON), and decodes what it wrote.

// wireTime is RFC 3339 in UTC with a fixed nine-digit fraction, so that
// records sort as text and every consumer sees the same width.
type wireTime time.Time

const jsonTime = "2006-01-02T15:04:05.000000000Z07:00"

func (t wireTime) appendJSON(b []byte) []byte {
	b = append(b, '"')
	b = time.Time(t).UTC().AppendFormat(b, jsonTime)
	return append(b, '"')
}

func (t wireTime) MarshalJSON() ([]byte, error) { return t.appendJSON(nil), nil }

func (t *wireTime) UnmarshalText(b []byte) error {
	v, err := time.Parse(time.RFC3339Nano, string(b))
	*t = wireTime(v)
	return err
}

// wireOptTime is a wireTime that is "" when unknown (zero).
type wireOptTime time.Time

func (t wireOptTime) appendJSON(b []byte) []byte {
	if time.Time(t).IsZero() {
		return append(b, `""`...)
	}
	return wireTime(t).appendJSON(b)
}

func (t wireOptTime) MarshalJSON() ([]byte, error) { return t.appendJSON(nil), nil }

func (t *wireOptTime) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*t = wireOptTime{}
		return nil
	}
	return (*wireTime)(t).UnmarshalText(b)
}

// wireAddr is an address, "" when there is none.
type wireAddr netip.Addr

func (a wireAddr) appendJSON(b []byte) []byte {
	b = append(b, '"')
	if ip := netip.Addr(a); ip.IsValid() {
		b = ip.AppendTo(b)
	}
	return append(b, '"')
}

func (a wireAddr) MarshalJSON() ([]byte, error) { return a.appendJSON(nil), nil }

func (a *wireAddr) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*a = wireAddr{}
		return nil
	}
	ip, err := netip.ParseAddr(string(b))
	*a = wireAddr(ip)
	return err
}

// wireStatus is an entry's IPS_* bits as conntrack-tools names them,
// lowest first; status_bits carries the same as a number, which is what
// the reader keeps.
type wireStatus uint32

func (s wireStatus) appendJSON(b []byte) []byte {
	b = append(b, '[')
	for bit, v := 0, uint32(s); v != 0; bit, v = bit+1, v>>1 {
		if v&1 != 0 {
			if b[len(b)-1] != '[' {
				b = append(b, ',')
			}
			b = appendJSONString(b, event.StatusBitName(bit))
		}
	}
	return append(b, ']')
}

func (s wireStatus) MarshalJSON() ([]byte, error) { return s.appendJSON(nil), nil }

func (s *wireStatus) UnmarshalJSON(b []byte) error {
	var names []string
	if err := jsonUnmarshal(b, &names); err != nil {
		return fmt.Errorf("status: %w", err)
	}
	return nil
}

// wireSeconds is a duration in seconds, to the millisecond.
type wireSeconds float64

func (s wireSeconds) appendJSON(b []byte) []byte {
	return strconv.AppendFloat(b, float64(s), 'f', 3, 64)
}

func (s wireSeconds) MarshalJSON() ([]byte, error) { return s.appendJSON(nil), nil }

func (s *wireSeconds) UnmarshalJSON(b []byte) error {
	return jsonUnmarshal(b, (*float64)(s))
}

// wireCounts is an object with every reason cttrace knows, in the
// kernel's order (absent from a record read back: 0).
type wireCounts event.Counts

func (c wireCounts) appendJSON(b []byte) []byte {
	b = append(b, '{')
	for i, r := range event.Reasons() {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, string(r))
		b = append(b, ':')
		b = strconv.AppendUint(b, event.Counts(c).Of(r), 10)
	}
	return append(b, '}')
}

func (c wireCounts) MarshalJSON() ([]byte, error) { return c.appendJSON(nil), nil }

func (c *wireCounts) UnmarshalJSON(b []byte) error {
	var m map[string]uint64
	if err := jsonUnmarshal(b, &m); err != nil {
		return err
	}
	counts := event.Counts{}
	for r, n := range m {
		counts.Add(event.Reason(r), n)
	}
	*c = wireCounts(counts)
	return nil
}

func appendStringField(b []byte, name, v string) []byte {
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, '"', ':')
	return appendJSONString(b, v)
}

func appendUintField(b []byte, name string, v uint64) []byte {
	b = append(b, ',', '"')
	b = append(b, name...)
	b = append(b, '"', ':')
	return strconv.AppendUint(b, v, 10)
}

// appendJSONString quotes s for JSON as encoding/json does (without its
// HTML escaping). The names cttrace writes are plain ASCII and are copied
// as they are; anything else (a host name, a recorded backend) is escaped,
// and invalid UTF-8 becomes U+FFFD.
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
			switch {
			case r == utf8.RuneError && size == 1:
				b = append(b, `\ufffd`...)
			case r == '\u2028' || r == '\u2029':
				// Line separators, which JavaScript strings may not hold.
				b = append(b, `\u202`...)
				b = append(b, byte('0'+r-'\u2020'))
			default:
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
	case '\b':
		return append(b, '\\', 'b')
	case '\f':
		return append(b, '\\', 'f')
	}
	const hex = "0123456789abcdef"
	return append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
}
