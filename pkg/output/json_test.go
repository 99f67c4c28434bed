package output

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/cttrace/cttrace/pkg/event"
)

const schemaPath = "../../docs/drops-schema-v1.json"

// writeRecords writes recs to w and flushes, failing the test on any error.
func writeRecords(t testing.TB, w Writer[*event.Record], recs ...*event.Record) {
	t.Helper()
	for _, r := range recs {
		if err := w.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
}

// writeJSON writes recs as cttrace's NDJSON, each naming testHost unless it
// names a host of its own, and returns the lines.
func writeJSON(t testing.TB, recs ...*event.Record) []string {
	t.Helper()
	var out bytes.Buffer
	w := NewStream(&out, JSON, StreamOptions{})
	for _, r := range recs {
		r := *r
		r.Host = cmp.Or(r.Host, testHost)
		if err := w.Write(&r); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(out.String(), "\n") {
		t.Fatalf("output does not end in a newline: %q", out.String())
	}
	return strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
}

func TestJSONEventExact(t *testing.T) {
	tests := []struct {
		name string
		e    *event.Event
		want string
	}{
		{"ipv4 udp table_full", ipv4TableFull(),
			`{"schema":1,"type":"event","time":"2025-03-14T23:41:07.123456789Z","host":"cttrace-test","reason":"table_full","detail":"","confidence":"exact",` +
				`"cpu":3,"netns":4026532500,"netns_id":4097,"zone":0,"count":1024,"max":1024,"family":"ipv4","proto":"udp","proto_num":17,` +
				`"src":"127.1.0.1","sport":40000,"dst":"127.0.0.1","dport":9,"status":[],"status_bits":0,"tcp_state":"","timeout_left_ms":0,"trigger":null}`},
		{"early_drop with trigger", earlyDrop(),
			`{"schema":1,"type":"event","time":"2025-03-14T23:41:07.125456789Z","host":"cttrace-test","reason":"early_drop","detail":"evicted_for_new_flow","confidence":"exact",` +
				`"cpu":1,"netns":4026531840,"netns_id":1,"zone":0,"count":262144,"max":262144,"family":"ipv4","proto":"tcp","proto_num":6,` +
				`"src":"10.0.0.5","sport":33000,"dst":"10.0.0.9","dport":80,"status":["CONFIRMED"],"status_bits":8,"tcp_state":"SYN_SENT","timeout_left_ms":87250,` +
				`"trigger":{"family":"ipv4","proto":"udp","proto_num":17,"src":"10.0.0.7","sport":5353,"dst":"10.0.0.9","dport":53}}`},
		{"ipv6 tcp insert_failed", ipv6InsertFailed(),
			`{"schema":1,"type":"event","time":"2025-03-14T23:41:07.124956789Z","host":"cttrace-test","reason":"insert_failed","detail":"chain_too_long","confidence":"exact",` +
				`"cpu":0,"netns":4026531840,"netns_id":1,"zone":7,"count":65000,"max":65536,"family":"ipv6","proto":"tcp","proto_num":6,` +
				`"src":"2001:db8::1","sport":51000,"dst":"2001:db8:ffff::2","dport":443,"status":["SEEN_REPLY","CONFIRMED"],"status_bits":10,"tcp_state":"SYN_SENT","timeout_left_ms":120000,"trigger":null}`},
		{"no flow", &event.Event{Time: t0, Reason: event.ReasonAllocFailed, Confidence: event.ConfidenceInferred},
			`{"schema":1,"type":"event","time":"2025-03-14T23:41:07.123456789Z","host":"cttrace-test","reason":"alloc_failed","detail":"","confidence":"inferred",` +
				`"cpu":0,"netns":0,"netns_id":0,"zone":0,"count":0,"max":0,"family":"","proto":"","proto_num":0,` +
				`"src":"","sport":0,"dst":"","dport":0,"status":[],"status_bits":0,"tcp_state":"","timeout_left_ms":0,"trigger":null}`},
	}
	for _, tt := range tests {
		lines := writeJSON(t, evRec(tt.e))
		if len(lines) != 1 || lines[0] != tt.want {
			t.Errorf("%s:\ngot  %s\nwant %s", tt.name, strings.Join(lines, "\n"), tt.want)
		}
		if !json.Valid([]byte(lines[0])) {
			t.Errorf("%s: not valid JSON", tt.name)
		}
	}
}

// A record names the host that wrote it: its own Host when it has one (a
// recording read back), this machine's otherwise; in cttrace's schema and
// in ECS alike.
func TestRecordHost(t *testing.T) {
	here, err := os.Hostname()
	if err != nil {
		t.Skip(err)
	}
	elsewhere := &event.Record{Host: "recorder-1", Event: ipv4TableFull()}
	own := evRec(ipv4TableFull())
	for _, ecs := range []bool{false, true} {
		var out bytes.Buffer
		writeRecords(t, NewStream(&out, JSON, StreamOptions{ECS: ecs}), elsewhere, own, elsewhere)
		var hosts []string
		for _, l := range strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n") {
			var d struct {
				Host     any `json:"host"`
				Observer struct {
					Hostname string `json:"hostname"`
				} `json:"observer"`
			}
			if err := json.Unmarshal([]byte(l), &d); err != nil {
				t.Fatal(err)
			}
			if !ecs {
				hosts = append(hosts, d.Host.(string))
				continue
			}
			name := d.Host.(map[string]any)["name"].(string)
			if name != d.Observer.Hostname {
				t.Errorf("ecs: host.name %q, observer.hostname %q", name, d.Observer.Hostname)
			}
			hosts = append(hosts, name)
		}
		if want := []string{"recorder-1", here, "recorder-1"}; !slices.Equal(hosts, want) {
			t.Errorf("ecs %v: hosts %q, want %q", ecs, hosts, want)
		}
	}
}

func TestJSONRefusesUnknownEnums(t *testing.T) {
	refused := []*event.Record{
		evRec(&event.Event{}),
		evRec(&event.Event{Reason: "bogus", Confidence: event.ConfidenceExact}),
		evRec(&event.Event{Reason: event.ReasonInsert}),
		aggRec(&event.Aggregate{Reason: "bogus", Count: 1, Sampling: 1}),
		aggRec(&event.Aggregate{Count: 1, Sampling: 1}),
	}
	for _, r := range refused {
		var out bytes.Buffer
		w := NewStream(&out, JSON, StreamOptions{})
		if err := w.Write(r); err == nil {
			t.Errorf("Write(%+v %+v) wrote an invalid record", r.Event, r.Aggregate)
		}
		w.Flush()
		if out.Len() != 0 {
			t.Errorf("refused record still wrote %q", out.String())
		}
	}
}

// A record with nothing in it is no record: no stream writes anything.
func TestEmptyRecordWritesNothing(t *testing.T) {
	for _, o := range []struct {
		f Format
		StreamOptions
	}{{Text, StreamOptions{}}, {JSON, StreamOptions{}}, {JSON, StreamOptions{ECS: true}}} {
		var out bytes.Buffer
		writeRecords(t, NewStream(&out, o.f, o.StreamOptions), &event.Record{}, &event.Record{Host: "x"})
		if out.Len() != 0 {
			t.Errorf("%s %+v: an empty record wrote %q", o.f, o.StreamOptions, out.String())
		}
	}
}

func TestJSONTimeIsUTCWithNineDigits(t *testing.T) {
	e := ipv4TableFull()
	e.Time = time.Date(2025, 1, 2, 3, 4, 5, 0, time.FixedZone("X", -5*3600))
	lines := writeJSON(t, evRec(e))
	if !strings.Contains(lines[0], `"time":"2025-01-02T08:04:05.000000000Z"`) {
		t.Errorf("time not in UTC with nine digits: %s", lines[0])
	}
}

func TestJSONLostAndSummary(t *testing.T) {
	lines := writeJSON(t, lostRec(5, 12, t0), sumRec(summary()))
	want := []string{
		`{"schema":1,"type":"lost","time":"2025-03-14T23:41:07.123456789Z","host":"cttrace-test","lost":5,"lost_total":12}`,
		`{"schema":1,"type":"summary","time":"2025-03-14T23:42:07.123456789Z","host":"cttrace-test","backend":"fentry",` +
			`"events":{"table_full":2,"alloc_failed":0,"early_drop":2,"insert_failed":1,"insert":0,"delete":0,"clash_resolved":0,"gc_evict":0},` +
			`"visible":["table_full","alloc_failed","early_drop","insert_failed","insert","delete","clash_resolved","gc_evict"],` +
			`"lost":17,"aggregated":0,"duration_s":60.503}`,
	}
	if !slices.Equal(lines, want) {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
}

// An empty summary still lists every reason (the schema requires them)
// and an empty, not null, visible list.
func TestJSONEmptySummary(t *testing.T) {
	lines := writeJSON(t, sumRec(&event.Summary{}))
	want := `{"schema":1,"type":"summary","time":"0001-01-01T00:00:00.000000000Z","host":"cttrace-test","backend":"",` +
		`"events":{"table_full":0,"alloc_failed":0,"early_drop":0,"insert_failed":0,"insert":0,"delete":0,"clash_resolved":0,"gc_evict":0},` +
		`"visible":[],"lost":0,"aggregated":0,"duration_s":0.000}`
	if len(lines) != 1 || lines[0] != want {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(lines, "\n"), want)
	}
}

func TestJSONStringEscaping(t *testing.T) {
	for _, s := range []string{"fentry", `a"b\c`, "tab\tnew\nline\x01", "héllo ✓", "bad\xffutf8", ""} {
		got := appendJSONString(nil, s)
		var back string
		if err := json.Unmarshal(got, &back); err != nil {
			t.Errorf("appendJSONString(%q) = %s: %v", s, got, err)
			continue
		}
		want, _ := json.Marshal(s)
		var wantBack string
		json.Unmarshal(want, &wantBack)
		if back != wantBack {
			t.Errorf("appendJSONString(%q) decodes to %q, want %q", s, back, wantBack)
		}
	}
}

// wireOf is the wire value a JSON stream writes for r, built as the writer
// builds it: host is the writer's own, used when r names none.
func wireOf(r *event.Record, host string) (interface{ appendJSON([]byte) []byte }, error) {
	h := wireHeader{Schema: SchemaVersion, Time: wireTime(r.Time()), Host: cmp.Or(r.Host, host)}
	switch {
	case r.Event != nil:
		w, err := toWireEvent(h, r.Event, new(wireFlow))
		return &w, err
	case r.Aggregate != nil:
		w, err := toWireAggregate(h, r.Aggregate)
		return &w, err
	case r.Lost != nil:
		w := toWireLost(h, r.Lost)
		return &w, nil
	case r.Summary != nil:
		w := toWireSummary(h, r.Summary)
		return &w, nil
	}
	return nil, fmt.Errorf("empty record")
}

// wireEdgeRecords are records at the edges of what the wire carries:
// extreme numbers, times off UTC, unnamed status bits, an out-of-range TCP
// state, a trigger without a flow, and hosts and backends that need
// escaping.
func wireEdgeRecords() []*event.Record {
	// Names that need escaping.
	names := []string{`quo"te\back`, "tab\tnl\ncr\r\x01\x1f\x7f\b\f", "héllo ✓ 日本\u2028\u2029", "bad\xffutf8\xc3", "<html>&amp;", ""}
	var recs []*event.Record
	big := &event.Event{Time: time.Date(2038, 1, 19, 3, 14, 8, 999999999, time.FixedZone("Y", 5*3600+1800)),
		Reason: event.ReasonDelete, Detail: event.DetailNetlink, Confidence: event.ConfidenceExact,
		CPU: math.MaxUint32, Netns: event.Netns{ID: math.MaxUint64, Inode: math.MaxUint32}, Zone: math.MaxUint16, Count: math.MaxUint32, Max: math.MaxUint32,
		Status: math.MaxUint32, TCPState: 200, TimeoutLeft: -time.Duration(math.MaxInt64),
		Flow:    tuple(event.ProtoTCP, "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535", "[::]:0"),
		Trigger: &event.Tuple{}}
	udplite := &event.Event{Time: t0, Reason: event.ReasonClashResolved, Confidence: event.ConfidenceExact, TCPState: 3,
		Flow: tuple(136, "0.0.0.0:1", "255.255.255.255:65535"), Trigger: func() *event.Tuple { x := tuple(132, "[::1]:1", "[::2]:2"); return &x }()}
	for i, n := range names {
		recs = append(recs, &event.Record{Host: n, Event: big}, &event.Record{Host: n, Event: udplite},
			&event.Record{Host: n, Summary: &event.Summary{Time: t0, Backend: n, Events: counts(map[event.Reason]uint64{event.ReasonGCEvict: math.MaxUint64}),
				Visible: event.Reasons()[i%3:], Lost: math.MaxUint64, Aggregated: uint64(i), Duration: 400*24*time.Hour + time.Millisecond}},
			&event.Record{Host: n, Lost: &event.Lost{Time: big.Time, Lost: math.MaxUint64, Total: math.MaxUint64}},
			&event.Record{Host: n, Aggregate: &event.Aggregate{Time: big.Time, Interval: 1234567 * time.Microsecond, Reason: event.ReasonGCEvict,
				Netns: event.Netns{ID: math.MaxUint64, Inode: math.MaxUint32}, Source: netip.MustParseAddr("fe80::1"), Count: math.MaxUint64, Last: big.Time, Sampling: math.MaxUint64}})
	}
	return recs
}

// The hand encoder writes exactly what encoding/json makes of the same wire
// values, the ones the decoder (read.go) reads: the two cannot drift apart,
// field by field, name by name, in order and in escaping. Checked through
// the stream writer, so the header it builds is checked too.
func TestJSONWireMatchesEncodingJSON(t *testing.T) {
	recs := append(everyRecord(), wireEdgeRecords()...)
	var hand bytes.Buffer
	w := NewStream(&hand, JSON, StreamOptions{}).(*jsonWriter)
	w.host = "this-machine"
	// A record without a host gets the writer's, with one its own.
	recs = append(recs, evRec(earlyDrop()), &event.Record{Host: "elsewhere", Lost: &event.Lost{Time: t0, Lost: 1, Total: 2}})
	writeRecords(t, w, recs...)
	lines := strings.SplitAfter(hand.String(), "\n")
	if lines[len(lines)-1] != "" {
		t.Fatalf("output does not end in a newline")
	}
	lines = lines[:len(lines)-1]
	if len(lines) != len(recs) {
		t.Fatalf("%d records written as %d lines", len(recs), len(lines))
	}
	for i, r := range recs {
		v, err := wireOf(r, w.host)
		if err != nil {
			t.Fatal(err)
		}
		var std bytes.Buffer
		enc := json.NewEncoder(&std)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(v); err != nil {
			t.Fatalf("record %d: encoding/json: %v", i, err)
		}
		if lines[i] != std.String() {
			t.Errorf("record %d: the hand encoder and encoding/json differ:\nhand %sjson %s", i, lines[i], std.String())
		}
		if got := string(v.appendJSON(nil)) + "\n"; got != std.String() {
			t.Errorf("record %d: appendJSON and encoding/json differ:\nhand %sjson %s", i, got, std.String())
		}
	}
}

func compileSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	c := jsonschema.NewCompiler()
	sch, err := c.Compile(schemaPath)
	if err != nil {
		t.Fatalf("compile %s: %v", schemaPath, err)
	}
	return sch
}

func validateLine(sch *jsonschema.Schema, line string) error {
	inst, err := jsonschema.UnmarshalJSON(strings.NewReader(line))
	if err != nil {
		return err
	}
	return sch.Validate(inst)
}

func recordType(line string) string {
	var rec struct{ Type string }
	json.Unmarshal([]byte(line), &rec)
	return rec.Type
}

// TestJSONSchema validates every kind of record the writer produces against
// docs/drops-schema-v1.json, so the document cannot drift from the code.
func TestJSONSchema(t *testing.T) {
	sch := compileSchema(t)
	recs := everyRecord()
	lines := writeJSON(t, recs...)
	want := map[string]int{}
	for _, r := range recs {
		switch {
		case r.Event != nil:
			want["event"]++
		case r.Aggregate != nil:
			want["aggregate"]++
		case r.Lost != nil:
			want["lost"]++
		case r.Summary != nil:
			want["summary"]++
		}
	}
	types := map[string]int{}
	for _, l := range lines {
		if err := validateLine(sch, l); err != nil {
			t.Errorf("valid output rejected:\n%s\n%v", l, err)
		}
		types[recordType(l)]++
	}
	if len(want) != 4 || want["event"] < len(event.Reasons()) || !maps.Equal(types, want) {
		t.Errorf("not every record was checked: %v, want %v", types, want)
	}
}

// TestJSONSchemaRejects makes sure the schema test can fail: records one
// edit away from valid must not validate.
func TestJSONSchemaRejects(t *testing.T) {
	sch := compileSchema(t)
	valid := map[string]string{}
	for _, l := range writeJSON(t, evRec(earlyDrop()), aggRec(aggregate()), lostRec(1, 2, t0), sumRec(summary())) {
		valid[recordType(l)] = l
	}
	for typ, l := range valid {
		if err := validateLine(sch, l); err != nil {
			t.Fatalf("%s record does not validate, so rejections prove nothing: %v", typ, err)
		}
	}
	tests := []struct {
		name, typ string
		edit      func(map[string]any)
	}{
		{"missing cpu", "event", func(m map[string]any) { delete(m, "cpu") }},
		{"missing detail", "event", func(m map[string]any) { delete(m, "detail") }},
		{"missing trigger", "event", func(m map[string]any) { delete(m, "trigger") }},
		{"unknown reason", "event", func(m map[string]any) { m["reason"] = "dropped" }},
		{"unknown detail", "event", func(m map[string]any) { m["detail"] = "full" }},
		{"unknown confidence", "event", func(m map[string]any) { m["confidence"] = "likely" }},
		{"unknown type", "event", func(m map[string]any) { m["type"] = "drop" }},
		{"schema 2", "event", func(m map[string]any) { m["schema"] = 2 }},
		{"extra field", "event", func(m map[string]any) { m["comm"] = "nginx" }},
		{"port as string", "event", func(m map[string]any) { m["sport"] = "33000" }},
		{"port out of range", "event", func(m map[string]any) { m["dport"] = 65536 }},
		{"time with millis", "event", func(m map[string]any) { m["time"] = "2025-03-14T23:41:07.125Z" }},
		{"time not UTC", "event", func(m map[string]any) { m["time"] = "2025-03-14T23:41:07.125456789+01:00" }},
		{"trigger missing dport", "event", func(m map[string]any) { delete(m["trigger"].(map[string]any), "dport") }},
		{"trigger without family", "event", func(m map[string]any) { m["trigger"].(map[string]any)["family"] = "" }},
		{"status not a list", "event", func(m map[string]any) { m["status"] = "CONFIRMED" }},
		{"missing netns_id", "event", func(m map[string]any) { delete(m, "netns_id") }},
		{"netns_id as string", "event", func(m map[string]any) { m["netns_id"] = "1" }},
		{"netns_id negative", "event", func(m map[string]any) { m["netns_id"] = -1 }},
		{"netns_id fractional", "event", func(m map[string]any) { m["netns_id"] = 1.5 }},
		{"aggregate missing netns_id", "aggregate", func(m map[string]any) { delete(m, "netns_id") }},
		{"aggregate netns_id null", "aggregate", func(m map[string]any) { m["netns_id"] = nil }},
		{"aggregate missing sampling", "aggregate", func(m map[string]any) { delete(m, "sampling") }},
		{"aggregate of nothing", "aggregate", func(m map[string]any) { m["count"] = 0 }},
		{"lost missing lost_total", "lost", func(m map[string]any) { delete(m, "lost_total") }},
		{"lost negative", "lost", func(m map[string]any) { m["lost"] = -1 }},
		{"lost with an event field", "lost", func(m map[string]any) { m["reason"] = "table_full" }},
		{"summary missing a reason", "summary", func(m map[string]any) { delete(m["events"].(map[string]any), "insert") }},
		{"summary unknown reason", "summary", func(m map[string]any) { m["events"].(map[string]any)["dropped"] = 1 }},
		{"summary missing duration", "summary", func(m map[string]any) { delete(m, "duration_s") }},
		{"summary as lost", "summary", func(m map[string]any) { m["type"] = "lost" }},
	}
	for _, tt := range tests {
		var m map[string]any
		if err := json.Unmarshal([]byte(valid[tt.typ]), &m); err != nil {
			t.Fatal(err)
		}
		tt.edit(m)
		bad, _ := json.Marshal(m)
		if err := validateLine(sch, string(bad)); err == nil {
			t.Errorf("%s: schema accepted %s", tt.name, bad)
		}
	}
}

// TestSchemaRequiresEveryProperty keeps the schema exact: every object it
// describes requires each property it lists and allows no others.
func TestSchemaRequiresEveryProperty(t *testing.T) {
	raw, err := os.ReadFile(schemaPath)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	var walk func(path string, v any)
	walk = func(path string, v any) {
		m, ok := v.(map[string]any)
		if !ok {
			return
		}
		if props, ok := m["properties"].(map[string]any); ok {
			var req []string
			for _, r := range m["required"].([]any) {
				req = append(req, r.(string))
			}
			for p := range props {
				if !slices.Contains(req, p) {
					t.Errorf("%s: property %q not required", path, p)
				}
			}
			if m["additionalProperties"] != false {
				t.Errorf("%s: additionalProperties is not false", path)
			}
		}
		for k, sub := range m {
			walk(path+"/"+k, sub)
		}
	}
	walk("#", doc)
}

// TestJSONFieldsMatchSchema checks the other direction: every field the
// writer emits is one the schema lists, in the order the schema lists them.
func TestJSONFieldsMatchSchema(t *testing.T) {
	raw, _ := os.ReadFile(schemaPath)
	var doc struct {
		Defs map[string]struct {
			Required []string `json:"required"`
		} `json:"$defs"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	lines := writeJSON(t, evRec(earlyDrop()), aggRec(aggregate()), lostRec(1, 1, t0), sumRec(summary()))
	seen := map[string]bool{}
	for _, l := range lines {
		keys := topLevelKeys(t, l)
		typ := recordType(l)
		seen[typ] = true
		if want := doc.Defs[typ].Required; !slices.Equal(keys, want) {
			t.Errorf("%s keys\n%v\nschema\n%v", typ, keys, want)
		}
	}
	if len(seen) != 4 {
		t.Errorf("record types checked: %v", seen)
	}
}

// An aggregate record, named and "other", as docs/drops.md shows it, and
// valid against the schema.
func TestJSONAggregate(t *testing.T) {
	other := &event.Aggregate{Time: t0, Interval: time.Second, Reason: event.ReasonTableFull, Count: 250000, Sampling: 64}
	got := strings.Join(writeJSON(t, aggRec(aggregate()), aggRec(other)), "\n")
	want := `{"schema":1,"type":"aggregate","time":"2025-03-14T23:41:07.123456789Z","host":"cttrace-test","reason":"table_full","netns":4026531840,"netns_id":1,"family":"ipv4","src":"203.0.113.7","count":4021,"interval_s":1.000,"last":"2025-03-14T23:41:07.122456789Z","sampling":1}
{"schema":1,"type":"aggregate","time":"2025-03-14T23:41:07.123456789Z","host":"cttrace-test","reason":"table_full","netns":0,"netns_id":0,"family":"","src":"other","count":250000,"interval_s":1.000,"last":"","sampling":64}`
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

// netns_id is the namespace's identity, right after netns, its inode
// number: the kernel's cookie, or 2^63 + the inode number on a kernel
// without cookies, written as a JSON number in full (above 2^53 too), and 0
// for no namespace ("other"). The schema takes every uint64 and nothing
// past it.
func TestJSONNetnsID(t *testing.T) {
	ev := ipv4TableFull()
	ev.Netns = inodeNetns
	agg := aggregate()
	agg.Netns = inodeNetns
	big := aggregate()
	big.Netns = event.Netns{ID: math.MaxUint64, Inode: 1}
	other := &event.Aggregate{Time: t0, Interval: time.Second, Reason: event.ReasonTableFull, Count: 1, Sampling: 1}
	lines := writeJSON(t, evRec(ipv4TableFull()), evRec(ev), aggRec(aggregate()), aggRec(agg), aggRec(big), aggRec(other))
	if id := event.InodeID(4026532500); id != 1<<63+4026532500 || strconv.FormatUint(id, 10) != "9223372040881308308" {
		t.Fatalf("InodeID(4026532500) = %d, want 2^63 + 4026532500", id)
	}
	want := []string{
		`"netns":4026532500,"netns_id":4097,"zone":`,
		`"netns":4026532500,"netns_id":9223372040881308308,"zone":`,
		`"netns":4026531840,"netns_id":1,"family":"ipv4"`,
		`"netns":4026532500,"netns_id":9223372040881308308,"family":"ipv4"`,
		`"netns":1,"netns_id":18446744073709551615,"family":"ipv4"`,
		`"netns":0,"netns_id":0,"family":"","src":"other"`,
	}
	sch := compileSchema(t)
	for i, l := range lines {
		if !strings.Contains(l, want[i]) {
			t.Errorf("record %d lacks %s:\n%s", i, want[i], l)
		}
		if err := validateLine(sch, l); err != nil {
			t.Errorf("record %d rejected by the schema: %v\n%s", i, err, l)
		}
	}
	// One past the largest uint64 is not a netns_id, nor is a negative one
	// (edited as text: a float64 cannot carry 2^64 - 1 and 2^64 apart).
	for _, bad := range []string{`"netns_id":18446744073709551616,`, `"netns_id":-1,`, `"netns_id":"1",`} {
		l := strings.Replace(lines[4], `"netns_id":18446744073709551615,`, bad, 1)
		if l == lines[4] {
			t.Fatalf("no netns_id to edit in %s", lines[4])
		}
		if validateLine(sch, l) == nil {
			t.Errorf("schema accepted %s", l)
		}
	}
}

func topLevelKeys(t *testing.T, line string) []string {
	dec := json.NewDecoder(bufio.NewReader(strings.NewReader(line)))
	dec.Token() // {
	var keys []string
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			t.Fatal(err)
		}
	}
	return keys
}

func BenchmarkJSONEvent(b *testing.B) {
	w := NewStream(discardWriter{}, JSON, StreamOptions{})
	r := evRec(earlyDrop())
	b.ReportAllocs()
	for b.Loop() {
		if err := w.Write(r); err != nil {
			b.Fatal(err)
		}
	}
}
