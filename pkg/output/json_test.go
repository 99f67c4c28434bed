package output

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
	"github.com/santhosh-tekuri/jsonschema/v6"
)

const schemaPath = "../../docs/drops-schema-v1.json"

func writeJSON(t testing.TB, f func(*JSONWriter) error) []string {
	t.Helper()
	var out bytes.Buffer
	w := NewJSON(&out)
	w.Host = "cttrace-test"
	if err := f(w); err != nil {
		t.Fatal(err)
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
				`"cpu":3,"netns":4026532500,"zone":0,"count":1024,"max":1024,"family":"ipv4","proto":"udp","proto_num":17,` +
				`"src":"127.1.0.1","sport":40000,"dst":"127.0.0.1","dport":9,"status":[],"status_bits":0,"tcp_state":"","timeout_left_ms":0,"trigger":null}`},
		{"early_drop with trigger", earlyDrop(),
			`{"schema":1,"type":"event","time":"2025-03-14T23:41:07.125456789Z","host":"cttrace-test","reason":"early_drop","detail":"evicted_for_new_flow","confidence":"exact",` +
				`"cpu":1,"netns":4026531840,"zone":0,"count":262144,"max":262144,"family":"ipv4","proto":"tcp","proto_num":6,` +
				`"src":"10.0.0.5","sport":33000,"dst":"10.0.0.9","dport":80,"status":["CONFIRMED"],"status_bits":8,"tcp_state":"SYN_SENT","timeout_left_ms":87250,` +
				`"trigger":{"family":"ipv4","proto":"udp","proto_num":17,"src":"10.0.0.7","sport":5353,"dst":"10.0.0.9","dport":53}}`},
		{"ipv6 tcp insert_failed", ipv6InsertFailed(),
			`{"schema":1,"type":"event","time":"2025-03-14T23:41:07.124956789Z","host":"cttrace-test","reason":"insert_failed","detail":"chain_too_long","confidence":"exact",` +
				`"cpu":0,"netns":4026531840,"zone":7,"count":65000,"max":65536,"family":"ipv6","proto":"tcp","proto_num":6,` +
				`"src":"2001:db8::1","sport":51000,"dst":"2001:db8:ffff::2","dport":443,"status":["SEEN_REPLY","CONFIRMED"],"status_bits":10,"tcp_state":"SYN_SENT","timeout_left_ms":120000,"trigger":null}`},
		{"no flow", &event.Event{Time: t0, Reason: event.ReasonAllocFailed, Confidence: event.ConfidenceInferred},
			`{"schema":1,"type":"event","time":"2025-03-14T23:41:07.123456789Z","host":"cttrace-test","reason":"alloc_failed","detail":"","confidence":"inferred",` +
				`"cpu":0,"netns":0,"zone":0,"count":0,"max":0,"family":"","proto":"","proto_num":0,` +
				`"src":"","sport":0,"dst":"","dport":0,"status":[],"status_bits":0,"tcp_state":"","timeout_left_ms":0,"trigger":null}`},
	}
	for _, tt := range tests {
		lines := writeJSON(t, func(w *JSONWriter) error { return w.Event(tt.e) })
		if len(lines) != 1 || lines[0] != tt.want {
			t.Errorf("%s:\ngot  %s\nwant %s", tt.name, strings.Join(lines, "\n"), tt.want)
		}
		if !json.Valid([]byte(lines[0])) {
			t.Errorf("%s: not valid JSON", tt.name)
		}
	}
}

func TestJSONRefusesUnknownEnums(t *testing.T) {
	for _, e := range []*event.Event{{}, {Reason: "bogus", Confidence: event.ConfidenceExact}, {Reason: event.ReasonInsert}} {
		var out bytes.Buffer
		w := NewJSON(&out)
		if err := w.Event(e); err == nil {
			t.Errorf("Event(%+v) wrote an invalid record", e)
		}
		w.Flush()
		if out.Len() != 0 {
			t.Errorf("refused event still wrote %q", out.String())
		}
	}
}

func TestJSONTimeIsUTCWithNineDigits(t *testing.T) {
	e := ipv4TableFull()
	e.Time = time.Date(2025, 1, 2, 3, 4, 5, 0, time.FixedZone("X", -5*3600))
	lines := writeJSON(t, func(w *JSONWriter) error { return w.Event(e) })
	if !strings.Contains(lines[0], `"time":"2025-01-02T08:04:05.000000000Z"`) {
		t.Errorf("time not in UTC with nine digits: %s", lines[0])
	}
}

func TestJSONLostAndSummary(t *testing.T) {
	lines := writeJSON(t, func(w *JSONWriter) error {
		if err := w.Lost(5, 12, t0); err != nil {
			return err
		}
		return w.Summary(summary())
	})
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

// TestJSONSchema validates every kind of record the writer produces against
// docs/drops-schema-v1.json, so the document cannot drift from the code.
func TestJSONSchema(t *testing.T) {
	sch := compileSchema(t)
	lines := writeJSON(t, func(w *JSONWriter) error {
		for _, e := range everyReason() {
			if err := w.Event(e); err != nil {
				return err
			}
		}
		if err := w.Lost(0, 0, time.Time{}); err != nil {
			return err
		}
		if err := w.Lost(3, 1<<40, t0); err != nil {
			return err
		}
		if err := w.Aggregate(aggregate()); err != nil {
			return err
		}
		v6 := aggregate()
		v6.Source, v6.Sampling = netip.MustParseAddr("2001:db8::1"), 1024
		if err := w.Aggregate(v6); err != nil {
			return err
		}
		if err := w.Aggregate(&event.Aggregate{Time: t0, Reason: event.ReasonInsertFailed, Count: 1, Sampling: 1}); err != nil {
			return err
		}
		if err := w.Summary(Summary{}); err != nil {
			return err
		}
		return w.Summary(summary())
	})
	types := map[string]int{}
	for _, l := range lines {
		if err := validateLine(sch, l); err != nil {
			t.Errorf("valid output rejected:\n%s\n%v", l, err)
		}
		var rec struct{ Type string }
		json.Unmarshal([]byte(l), &rec)
		types[rec.Type]++
	}
	if types["event"] < len(event.Reasons()) || types["lost"] == 0 || types["summary"] == 0 || types["aggregate"] != 3 {
		t.Errorf("not every record type was checked: %v", types)
	}
}

// TestJSONSchemaRejects makes sure the schema test can fail: records one
// edit away from valid must not validate.
func TestJSONSchemaRejects(t *testing.T) {
	sch := compileSchema(t)
	valid := map[string]string{}
	for _, l := range writeJSON(t, func(w *JSONWriter) error {
		w.Event(earlyDrop())
		w.Lost(1, 2, t0)
		return w.Summary(summary())
	}) {
		var rec struct{ Type string }
		json.Unmarshal([]byte(l), &rec)
		valid[rec.Type] = l
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
	lines := writeJSON(t, func(w *JSONWriter) error {
		w.Event(earlyDrop())
		w.Aggregate(aggregate())
		w.Lost(1, 1, t0)
		return w.Summary(summary())
	})
	for _, l := range lines {
		keys := topLevelKeys(t, l)
		var rec struct{ Type string }
		json.Unmarshal([]byte(l), &rec)
		typ := rec.Type
		if want := doc.Defs[typ].Required; !slices.Equal(keys, want) {
			t.Errorf("%s keys\n%v\nschema\n%v", typ, keys, want)
		}
	}
}

func aggregate() *event.Aggregate {
	return &event.Aggregate{Time: t0, Interval: time.Second, Reason: event.ReasonTableFull, Netns: 4026531840,
		Source: netip.MustParseAddr("203.0.113.7"), Count: 4021, Last: t0.Add(-time.Millisecond), Sampling: 1}
}

// An aggregate record, named and "other", as docs/drops.md shows it, and
// valid against the schema.
func TestJSONAggregate(t *testing.T) {
	other := &event.Aggregate{Time: t0, Interval: time.Second, Reason: event.ReasonTableFull, Count: 250000, Sampling: 64}
	got := strings.Join(writeJSON(t, func(w *JSONWriter) error {
		w.Aggregate(aggregate())
		return w.Aggregate(other)
	}), "\n")
	want := `{"schema":1,"type":"aggregate","time":"2025-03-14T23:41:07.123456789Z","host":"cttrace-test","reason":"table_full","netns":4026531840,"family":"ipv4","src":"203.0.113.7","count":4021,"interval_s":1.000,"last":"2025-03-14T23:41:07.122456789Z","sampling":1}
{"schema":1,"type":"aggregate","time":"2025-03-14T23:41:07.123456789Z","host":"cttrace-test","reason":"table_full","netns":0,"family":"","src":"other","count":250000,"interval_s":1.000,"last":"","sampling":64}`
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
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
	w := NewJSON(discard{})
	e := earlyDrop()
	b.ReportAllocs()
	for b.Loop() {
		if err := w.Event(e); err != nil {
			b.Fatal(err)
		}
	}
}
