package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// LoadSamples reads a results folder's samples.json (or that file itself).
func LoadSamples(path string) ([]Sample, error) {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		path = filepath.Join(path, "samples.json")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s []Sample
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// pointsOf lists the floods (sweep and label) and tracers of samples in
// the order they first appear: enough for Aggregate, which matches samples
// by sweep and label (the Spec is not saved; Distinct and MaxRate of the
// rows are then meaningless).
func pointsOf(samples []Sample) ([]Point, []Kind) {
	var points []Point
	var kinds []Kind
	for _, s := range samples {
		if !slices.ContainsFunc(points, func(p Point) bool { return p.Sweep == s.Sweep && p.Label == s.Point }) {
			points = append(points, Point{Sweep: s.Sweep, Label: s.Point})
		}
		if !slices.Contains(kinds, s.Kind) {
			kinds = append(kinds, s.Kind)
		}
	}
	slices.SortStableFunc(kinds, func(a, b Kind) int { return kindOrder(a) - kindOrder(b) })
	return points, kinds
}

// kindOrder ranks a tracer as the tables list them (AllKinds order, then
// the rest as found).
func kindOrder(k Kind) int {
	if i := slices.Index(KnownKinds, k.Base()); i >= 0 {
		return i
	}
	return len(KnownKinds)
}

// CompareMetric is one line of a before → after table.
type CompareMetric struct {
	Name   string
	Format string
	Value  func(Row) float64
}

// CompareMetrics are the lines Compare writes for each tracer.
var CompareMetrics = []CompareMetric{
	{"flood rate vs untraced", "%.2f", func(r Row) float64 { return r.Ratio }},
	{"BPF ns/run", "%.0f", func(r Row) float64 { return r.NsPerRun }},
	{"BPF ns/drop", "%.0f", func(r Row) float64 { return r.NsPerDrop }},
	{"tracer CPU ms/100k drops", "%.0f", func(r Row) float64 { return r.CPUPer100k }},
	{"peak RSS MiB", "%.1f", func(r Row) float64 { return r.RSSMiB }},
	{"capture", "%.3f", func(r Row) float64 { return r.Capture }},
	{"of which streamed one by one", "%.3f", func(r Row) float64 { return r.Streamed }},
	{"header / kernel drops", "%.3f", func(r Row) float64 { return r.Header }},
	{"lost/run", "%.0f", func(r Row) float64 { return r.Lost }},
}

// Compare writes, for each tracer of after that before has too, a table of
// CompareMetrics at the floods named by labels (all floods at the maximum
// rate when empty): "before → after" in each cell.
func Compare(w io.Writer, before, after []Sample, labels []string) {
	bp, bk := pointsOf(before)
	ap, ak := pointsOf(after)
	if len(labels) == 0 {
		for _, p := range ap {
			if strings.HasPrefix(p.Label, "max") && slices.ContainsFunc(bp, func(q Point) bool { return q.Label == p.Label }) {
				labels = append(labels, p.Label)
			}
		}
	}
	brows, arows := Aggregate(before, bp, bk), Aggregate(after, ap, ak)
	find := func(rows []Row, label string, k Kind) (Row, bool) {
		for _, r := range rows {
			if r.Point == label && r.Kind == k {
				return r, true
			}
		}
		return Row{}, false
	}
	for _, k := range ak {
		if k == Untraced || !slices.Contains(bk, k) {
			continue
		}
		fmt.Fprintf(w, "\n#### %s\n\n| |", k.Describe())
		for _, l := range labels {
			fmt.Fprintf(w, " %s: before → after |", l)
		}
		fmt.Fprintf(w, "\n| --- |%s\n", strings.Repeat(" ---: |", len(labels)))
		for _, m := range CompareMetrics {
			var line strings.Builder
			fmt.Fprintf(&line, "| %s |", m.Name)
			have := false
			for _, l := range labels {
				b, okb := find(brows, l, k)
				a, oka := find(arows, l, k)
				bv, av := math.NaN(), math.NaN()
				if okb {
					bv = m.Value(b)
				}
				if oka {
					av = m.Value(a)
				}
				have = have || !math.IsNaN(bv) || !math.IsNaN(av)
				cell := num(bv, m.Format) + " → " + num(av, m.Format)
				if m.Name == "flood rate vs untraced" {
					cell = ratioCell(b, okb) + " → " + ratioCell(a, oka)
				}
				fmt.Fprintf(&line, " %s |", cell)
			}
			if have { // a metric the tracer has (streamed: drops; header: top-sources)
				fmt.Fprintln(w, line.String())
			}
		}
	}
	// The untraced rates, for scale.
	fmt.Fprintf(w, "\nuntraced flood pps (median):")
	for _, l := range labels {
		b, _ := find(brows, l, Untraced)
		a, _ := find(arows, l, Untraced)
		fmt.Fprintf(w, " %s %s → %s;", l, num(b.PPS, "%.0f"), num(a.PPS, "%.0f"))
	}
	fmt.Fprintln(w)
}

// ratioCell is the median ratio to untraced, with the rounds' range when
// they differ; "–" when the row is missing (!ok).
func ratioCell(r Row, ok bool) string {
	if !ok {
		return "–"
	}
	s := num(r.Ratio, "%.2f")
	if !math.IsNaN(r.RatioMin) && r.RatioMax-r.RatioMin >= 0.005 {
		s += fmt.Sprintf(" (%.2f–%.2f)", r.RatioMin, r.RatioMax)
	}
	return s
}
