package output

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
)

// The Community ID test vectors of Zeek's implementation (seed 0), in both
// directions.
func TestCommunityID(t *testing.T) {
	for _, tt := range []struct {
		proto    uint8
		src, dst string
		want     string
	}{
		{event.ProtoTCP, "1.2.3.4:1122", "5.6.7.8:3344", "1:wCb3OG7yAFWelaUydu0D+125CLM="},
		{event.ProtoUDP, "1.2.3.4:1122", "5.6.7.8:3344", "1:0Mu9InQx6z4ZiCZM/7HXi2WMhOg="},
	} {
		for _, flip := range []bool{false, true} {
			src, dst := netip.MustParseAddrPort(tt.src), netip.MustParseAddrPort(tt.dst)
			if flip {
				src, dst = dst, src
			}
			got, ok := CommunityID(&event.Tuple{Family: event.FamilyIPv4, Proto: tt.proto, Src: src, Dst: dst})
			if !ok || got != tt.want {
				t.Errorf("%d %v → %v: %q, want %q", tt.proto, src, dst, got, tt.want)
			}
		}
	}
}

// ecsFields are the ECS definitions of the fields the writer uses, taken
// from elastic/ecs (testdata/ecs_fields.json says from where).
type ecsFields struct {
	Fields map[string]struct {
		Type    string   `json:"type"`
		Array   bool     `json:"array"`
		Allowed []string `json:"allowed"`
	} `json:"fields"`
}

func flatten(prefix string, v any, out map[string]any) {
	m, ok := v.(map[string]any)
	if !ok {
		out[prefix] = v
		return
	}
	for k, sub := range m {
		key := k
		if prefix != "" {
			key = prefix + "." + k
		}
		if prefix == "" && k == "@timestamp" {
			key = k
		}
		flatten(key, sub, out)
	}
}

// Every ECS field the writer fills has ECS's type (keyword, ip, long, date)
// and, where ECS lists them, one of its allowed values; every field
// outside cttrace.* is an ECS field.
func TestECSFieldTypes(t *testing.T) {
	raw, err := os.ReadFile("testdata/ecs_fields.json")
	if err != nil {
		t.Fatal(err)
	}
	var ecs ecsFields
	if err := json.Unmarshal(raw, &ecs); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	evict := earlyDrop()
	evict.Trigger = &event.Tuple{Family: event.FamilyIPv4, Proto: event.ProtoUDP,
		Src: netip.MustParseAddrPort("10.0.0.7:5353"), Dst: netip.MustParseAddrPort("10.0.0.9:53")}
	recs := append(evRecs(everyReason()), evRec(evict), aggRec(aggregate()), lostRec(3, 9, t0), sumRec(summary()))
	// Every other kind of record too: aggregates named and "other", the
	// empty summary.
	recs = append(recs, everyRecord()[len(everyReason()):]...)
	writeRecords(t, NewStream(&buf, JSON, StreamOptions{ECS: true}), recs...)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != len(recs) {
		t.Fatalf("%d records written as %d lines", len(recs), len(lines))
	}
	for _, line := range lines {
		var d map[string]any
		if err := json.Unmarshal([]byte(line), &d); err != nil {
			t.Fatalf("not JSON: %q", line)
		}
		flat := map[string]any{}
		flatten("", d, flat)
		for key, v := range flat {
			if strings.HasPrefix(key, "cttrace.") {
				continue
			}
			def, ok := ecs.Fields[key]
			if !ok {
				t.Errorf("%s is not an ECS field: %s", key, line)
				continue
			}
			values := []any{v}
			if list, isList := v.([]any); isList {
				if !def.Array {
					t.Errorf("%s: a list where ECS has one value", key)
				}
				values = list
			}
			for _, x := range values {
				if err := ecsTypeCheck(def.Type, x); err != "" {
					t.Errorf("%s = %v: %s", key, x, err)
				}
				if len(def.Allowed) > 0 && !contains(def.Allowed, x) {
					t.Errorf("%s = %v: not one of ECS's %v", key, x, def.Allowed)
				}
			}
		}
	}
	// The eviction's source is the flow it made room for; the victim is apart.
	var ev map[string]any
	json.Unmarshal([]byte(lines[len(everyReason())]), &ev)
	if ev["source"].(map[string]any)["ip"] != "10.0.0.7" || ev["cttrace"].(map[string]any)["victim"] == nil {
		t.Errorf("eviction: source %v, victim %v", ev["source"], ev["cttrace"].(map[string]any)["victim"])
	}
}

func contains(list []string, v any) bool {
	s, _ := v.(string)
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func ecsTypeCheck(typ string, v any) string {
	switch typ {
	case "keyword", "match_only_text", "wildcard":
		if _, ok := v.(string); !ok {
			return "want a string"
		}
	case "ip":
		s, _ := v.(string)
		if _, err := netip.ParseAddr(s); err != nil {
			return "want an IP address"
		}
	case "long":
		f, ok := v.(float64)
		if !ok || f != float64(int64(f)) {
			return "want an integer"
		}
	case "date":
		s, _ := v.(string)
		if _, err := time.Parse(time.RFC3339Nano, s); err != nil {
			return "want an RFC 3339 date"
		}
	default:
		return "type " + typ + " not checked by this test"
	}
	return ""
}

// cttrace.netns_id is the namespace's netns cookie beside cttrace.netns,
// its inode number, in events and aggregates alike, as an exact JSON
// number; it is left out where the kernel gave no cookie (the identity
// that stands in is past 2^63, which Elasticsearch's long cannot hold),
// and for "other", which names no namespace.
func TestECSNetnsID(t *testing.T) {
	ev := ipv4TableFull()
	ev.Netns = inodeNetns
	agg := aggregate()
	agg.Netns = inodeNetns
	other := &event.Aggregate{Time: t0, Interval: time.Second, Reason: event.ReasonTableFull, Count: 1, Sampling: 1}
	recs := []*event.Record{evRec(ipv4TableFull()), evRec(ev), aggRec(aggregate()), aggRec(agg), aggRec(other)}
	want := []struct{ netns, id string }{ // id "": no netns_id
		{"4026532500", "4097"}, {"4026532500", ""},
		{"4026531840", "1"}, {"4026532500", ""}, {"0", ""},
	}
	var buf bytes.Buffer
	writeRecords(t, NewStream(&buf, JSON, StreamOptions{ECS: true}), recs...)
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != len(recs) {
		t.Fatalf("%d records written as %d lines", len(recs), len(lines))
	}
	for i, l := range lines {
		dec := json.NewDecoder(strings.NewReader(l))
		dec.UseNumber()
		var d struct {
			Cttrace map[string]any `json:"cttrace"`
		}
		if err := dec.Decode(&d); err != nil {
			t.Fatal(err)
		}
		netns, _ := d.Cttrace["netns"].(json.Number)
		id, ok := d.Cttrace["netns_id"].(json.Number)
		if ok != (want[i].id != "") || netns.String() != want[i].netns || id.String() != want[i].id {
			t.Errorf("record %d: cttrace.netns %v, cttrace.netns_id %v, want %s and %s:\n%s", i, d.Cttrace["netns"], d.Cttrace["netns_id"], want[i].netns, want[i].id, l)
		}
	}
}
