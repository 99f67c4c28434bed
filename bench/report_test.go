package bench

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cttrace/cttrace/internal/ctlab"
)

func TestAggregate(t *testing.T) {
	points := []Point{{Sweep: "rate", Label: "10k/s", Spec: ctlab.FloodSpec{Rate: 10000, Sources: 10, Packets: 1000}},
		{Sweep: "rate", Label: "max", Spec: ctlab.FloodSpec{Sources: 10, Packets: 1000}}}
	kinds := []Kind{Untraced, DropsFile}
	var samples []Sample
	for round, u := range []float64{100, 200, 300} {
		for _, p := range points {
			samples = append(samples,
				Sample{Round: round, Sweep: p.Sweep, Point: p.Label, Kind: Untraced, PPS: u, Packets: 1000, SenderCPU: time.Millisecond},
				Sample{Round: round, Sweep: p.Sweep, Point: p.Label, Kind: DropsFile, PPS: u / 2, Packets: 1000, SenderCPU: 2 * time.Millisecond,
					BPFRunTimeNs: 5000, BPFRunCnt: 10, StatsDrops: 5, TracerCPU: 50 * time.Millisecond, CPUDrops: 100000,
					PeakRSS: 30 << 20, CPUWindow: 500 * time.Millisecond, KernelDrops: 1000, Reported: 1000 - int64(round), Header: -1, Streamed: 100, Lost: int64(round)})
		}
	}
	rows := Aggregate(samples, points, kinds)
	if len(rows) != 4 {
		t.Fatalf("%d rows, want 4", len(rows))
	}
	r := rows[3]
	if r.Kind != DropsFile || r.Point != "max" || r.Rounds != 3 {
		t.Fatalf("row order: %+v", r)
	}
	check := func(name string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > 1e-9 {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	check("PPS", r.PPS, 100)
	check("Ratio", r.Ratio, 0.5)
	check("SenderRatio", r.SenderRatio, 2)
	check("NsPerRun", r.NsPerRun, 500)
	check("NsPerDrop", r.NsPerDrop, 1000)
	check("CPUPer100k", r.CPUPer100k, 50)
	check("RSSMiB", r.RSSMiB, 30)
	check("Capture", r.Capture, 0.999)
	check("CaptureMin", r.CaptureMin, 0.998)
	check("Lost", r.Lost, 1)
	if !math.IsNaN(r.Header) || !math.IsNaN(rows[0].NsPerRun) {
		t.Errorf("header %v, untraced ns/run %v: want NaN", r.Header, rows[0].NsPerRun)
	}

	// A reference flood of its own, when there is one, is the denominator.
	withRef := append([]Sample(nil), samples...)
	for i := range withRef {
		if withRef[i].Kind == DropsFile && withRef[i].Point == "max" {
			withRef[i].RefPPS, withRef[i].RefSenderCPU = withRef[i].PPS*1.25, time.Millisecond
		}
	}
	if r := Aggregate(withRef, points, kinds)[3]; math.Abs(r.Ratio-0.8) > 1e-9 || math.Abs(r.SenderRatio-2) > 1e-9 {
		t.Errorf("with reference floods: ratio %v, sender %v; want 0.8, 2", r.Ratio, r.SenderRatio)
	}

	var md strings.Builder
	Markdown(&md, Header("6.18", "tracepoint", 2), rows)
	if !strings.Contains(md.String(), "| rate | max | cttrace drops -o json > file | 100 | 0.50 | 2.00 | 500 | 1000 | 50 | 10.0 | 30.0 | 0.999 (min 0.998); streamed 0.100 | 1 |") {
		t.Errorf("markdown:\n%s", md.String())
	}
	png := filepath.Join(t.TempDir(), "chart.png")
	if err := Chart(png, "test", rows, kinds); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(png); err != nil || !strings.HasPrefix(string(b), "\x89PNG") {
		t.Errorf("chart: %v, %q", err, b[:min(8, len(b))])
	}
}

func TestParsers(t *testing.T) {
	dir := t.TempDir()
	bt := filepath.Join(dir, "bt")
	os.WriteFile(bt, []byte(`{"type": "attached_probes", "data": {"probes": 2}}
{"type": "printf", "data": "ready\n"}
{"type": "map", "data": {"@drops": {"16777343": 3, "33554559": 4}}}
{"type": "map", "data": {"@n": 5}}
`), 0o644)
	if n, err := bpftraceSum(bt); err != nil || n != 12 {
		t.Errorf("bpftraceSum = %d, %v; want 12", n, err)
	}
	stderr := filepath.Join(dir, "err")
	os.WriteFile(stderr, []byte("cttrace: backend tracepoint\n-- 2.903s with backend tracepoint\nevents: table_full=120 insert_failed=3 lost=7 aggregated=100\n"), 0o644)
	if p, l, a, err := dropsSummary(stderr); err != nil || p != 123 || l != 7 || a != 100 {
		t.Errorf("dropsSummary = %d, %d, %d, %v; want 123, 7, 100", p, l, a, err)
	}
	out := filepath.Join(dir, "out")
	os.WriteFile(out, []byte(`{"schema":1,"type":"event","time":"x","reason":"table_full"}
{"schema":1,"type":"event","time":"x","reason":"insert"}
{"schema":1,"type":"lost","time":"x","lost":5,"lost_total":5}
{"schema":1,"type":"event","time":"x","reason":"insert_failed"}
{"schema":1,"type":"aggregate","time":"x","reason":"table_full","netns":1,"family":"ipv4","src":"127.0.0.1","count":40,"interval_s":1.000,"last":"x","sampling":1}
{"schema":1,"type":"aggregate","time":"x","reason":"table_full","netns":0,"family":"","src":"other","count":2,"interval_s":1.000,"last":"","sampling":1}
{"schema":1,"type":"ev`), 0o644)
	tr := &Tracer{Kind: DropsFile, out: out}
	if err := tr.scanDrops(); err != nil || tr.events != 2 || tr.lostSeen != 5 || tr.aggregated != 42 {
		t.Errorf("scanDrops: %d events, %d aggregated, %d lost, %v; want 2, 42, 5", tr.events, tr.aggregated, tr.lostSeen, err)
	}
	f, _ := os.OpenFile(out, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`ent","time":"x","reason":"table_full"}` + "\n")
	f.Close()
	if err := tr.scanDrops(); err != nil || tr.events != 3 {
		t.Errorf("scanDrops after append: %d events, %v; want 3", tr.events, err)
	}
}

func TestCompare(t *testing.T) {
	mk := func(ratio float64, rss int64) []Sample {
		var s []Sample
		for round := range 3 {
			s = append(s,
				Sample{Round: round, Sweep: "rate", Point: "max, 1k sources", Kind: Untraced, PPS: 100, Packets: 100},
				Sample{Round: round, Sweep: "rate", Point: "max, 1k sources", Kind: TopSources, PPS: 100 * ratio, RefPPS: 100, Packets: 100,
					BPFRunTimeNs: 1000, BPFRunCnt: 10, PeakRSS: rss << 20, KernelDrops: 10, Reported: 10, Header: -1, Streamed: -1})
		}
		return s
	}
	dir := t.TempDir()
	for name, s := range map[string][]Sample{"before": mk(0.5, 40), "after": mk(0.9, 30)} {
		b, _ := json.Marshal(s)
		os.MkdirAll(filepath.Join(dir, name), 0o755)
		os.WriteFile(filepath.Join(dir, name, "samples.json"), b, 0o644)
	}
	before, err := LoadSamples(filepath.Join(dir, "before"))
	if err != nil {
		t.Fatal(err)
	}
	after, err := LoadSamples(filepath.Join(dir, "after", "samples.json"))
	if err != nil {
		t.Fatal(err)
	}
	var w strings.Builder
	Compare(&w, before, after, nil)
	for _, want := range []string{
		"#### cttrace top-sources -o json",
		"| | max, 1k sources: before → after |",
		"| flood rate vs untraced | 0.50 → 0.90 |",
		"| BPF ns/run | 100 → 100 |",
		"| peak RSS MiB | 40.0 → 30.0 |",
		"| capture | 1.000 → 1.000 |",
	} {
		if !strings.Contains(w.String(), want) {
			t.Errorf("no %q in:\n%s", want, w.String())
		}
	}
}
