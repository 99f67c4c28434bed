package bench

import (
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"slices"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Row is one tracer at one point, over the rounds (medians unless said).
type Row struct {
	Sweep, Point string
	Distinct     int  // distinct sources of the flood
	MaxRate      bool // the flood was as fast as possible
	Kind         Kind
	Rounds       int
	PPS          float64 // flood rate, statistics off
	Ratio        float64 // PPS / untraced PPS (its reference flood, or the round's)
	RatioMin     float64 // the smallest and largest of the rounds' ratios
	RatioMax     float64
	SenderRatio  float64 // flooding process's CPU per packet / untraced's, same round
	SenderUs     float64 // flooding process's CPU per packet, µs
	NsPerRun     float64 // BPF run time / runs (statistics on); NaN if none
	NsPerDrop    float64 // BPF run time / kernel drops (statistics on)
	CPUPer100k   float64 // tracer user+system ms per 100,000 kernel drops
	CPUPercent   float64 // tracer user+system time / wall time, in % of one CPU
	RSSMiB       float64 // tracer peak RSS
	Capture      float64 // reported / kernel drops
	CaptureMin   float64
	Header       float64 // top-sources: namespace-line drops / kernel drops; NaN otherwise
	Streamed     float64 // drops: streamed one by one / kernel drops; NaN otherwise
	Lost         float64 // events lost per run
	// Steady state (Sweep "steady"): CPUPer100k is per 100,000 flows
	// admitted, and these are per flow.
	Steady        bool
	NsPerFlow     float64 // BPF run time / flows admitted (statistics on)
	RunsPerFlow   float64 // BPF runs / flows admitted
	InsertCapture float64 // top-sources: inserts counted / flows admitted; NaN otherwise
	Notes         []string
}

// Aggregate turns samples into rows, in the order of points and kinds.
func Aggregate(samples []Sample, points []Point, kinds []Kind) []Row {
	type key struct {
		sweep, point string
		round        int
	}
	untraced := map[key]Sample{}
	for _, s := range samples {
		if s.Kind == Untraced {
			untraced[key{s.Sweep, s.Point, s.Round}] = s
		}
	}
	var rows []Row
	for _, p := range points {
		for _, k := range kinds {
			r := Row{Sweep: p.Sweep, Point: p.Label, Distinct: p.Distinct(), MaxRate: p.Spec.Rate == 0, Kind: k,
				NsPerRun: math.NaN(), NsPerDrop: math.NaN(), CPUPercent: math.NaN(),
				CPUPer100k: math.NaN(), RSSMiB: math.NaN(), Capture: math.NaN(), CaptureMin: math.NaN(), Header: math.NaN(), Streamed: math.NaN(),
				RatioMin: math.NaN(), RatioMax: math.NaN(), Ratio: math.NaN(), SenderRatio: math.NaN(),
				Steady: p.Steady(), NsPerFlow: math.NaN(), RunsPerFlow: math.NaN(), InsertCapture: math.NaN()}
			var pps, ratio, sender, senderUs, nsRun, nsDrop, cpu, cpuPct, rss, capt, hdr, streamed, lost []float64
			var nsFlow, runsFlow, inserts []float64
			for _, s := range samples {
				if s.Sweep != p.Sweep || s.Point != p.Label || s.Kind != k {
					continue
				}
				r.Rounds++
				pps = append(pps, s.PPS)
				if s.Packets > 0 {
					senderUs = append(senderUs, float64(s.SenderCPU.Microseconds())/float64(s.Packets))
				}
				if s.RefPPS > 0 {
					// Its own reference flood, moments before.
					ratio = append(ratio, s.PPS/s.RefPPS)
					if s.RefSenderCPU > 0 {
						sender = append(sender, float64(s.SenderCPU)/float64(s.RefSenderCPU))
					}
				} else if u, ok := untraced[key{s.Sweep, s.Point, s.Round}]; ok && u.PPS > 0 {
					ratio = append(ratio, s.PPS/u.PPS)
					if u.SenderCPU > 0 && s.Packets > 0 && u.Packets > 0 {
						sender = append(sender, (float64(s.SenderCPU)/float64(s.Packets))/(float64(u.SenderCPU)/float64(u.Packets)))
					}
				}
				if s.Note != "" && !slices.Contains(r.Notes, s.Note) {
					r.Notes = append(r.Notes, s.Note)
				}
				if k == Untraced {
					continue
				}
				if s.BPFRunCnt > 0 {
					nsRun = append(nsRun, float64(s.BPFRunTimeNs)/float64(s.BPFRunCnt))
				}
				if s.StatsDrops > 0 {
					nsDrop = append(nsDrop, float64(s.BPFRunTimeNs)/float64(s.StatsDrops))
				}
				if s.CPUDrops > 0 {
					cpu = append(cpu, float64(s.TracerCPU.Milliseconds())*1e5/float64(s.CPUDrops))
				} else if s.CPUFlows > 0 {
					cpu = append(cpu, float64(s.TracerCPU.Milliseconds())*1e5/float64(s.CPUFlows))
				}
				if s.StatsFlows > 0 {
					nsFlow = append(nsFlow, float64(s.BPFRunTimeNs)/float64(s.StatsFlows))
					runsFlow = append(runsFlow, float64(s.BPFRunCnt)/float64(s.StatsFlows))
				}
				if s.Flows > 0 && s.Inserts >= 0 {
					inserts = append(inserts, float64(s.Inserts)/float64(s.Flows))
				}
				if s.CPUWindow > 0 {
					cpuPct = append(cpuPct, 100*float64(s.TracerCPU)/float64(s.CPUWindow))
				}
				rss = append(rss, float64(s.PeakRSS)/(1<<20))
				if s.KernelDrops > 0 && s.Reported >= 0 {
					capt = append(capt, float64(s.Reported)/float64(s.KernelDrops))
					if s.Header >= 0 {
						hdr = append(hdr, float64(s.Header)/float64(s.KernelDrops))
					}
					if s.Streamed >= 0 {
						streamed = append(streamed, float64(s.Streamed)/float64(s.KernelDrops))
					}
				}
				lost = append(lost, float64(s.Lost))
			}
			r.PPS, r.SenderUs = median(pps), median(senderUs)
			r.Ratio, r.SenderRatio = median(ratio), median(sender)
			r.NsPerRun, r.NsPerDrop, r.CPUPer100k, r.RSSMiB = median(nsRun), median(nsDrop), median(cpu), median(rss)
			r.CPUPercent = median(cpuPct)
			r.NsPerFlow, r.RunsPerFlow, r.InsertCapture = median(nsFlow), median(runsFlow), median(inserts)
			r.Capture, r.Header, r.Streamed, r.Lost = median(capt), median(hdr), median(streamed), median(lost)
			if len(capt) > 0 {
				r.CaptureMin = slices.Min(capt)
			}
			if len(ratio) > 1 && k != Untraced {
				r.RatioMin, r.RatioMax = slices.Min(ratio), slices.Max(ratio)
			}
			rows = append(rows, r)
		}
	}
	return rows
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// Markdown writes the rows as tables: refused flows, then the steady
// state (if any).
func Markdown(w io.Writer, header string, rows []Row) {
	fmt.Fprintln(w, header)
	var refused, steady []Row
	for _, r := range rows {
		if r.Steady {
			steady = append(steady, r)
		} else {
			refused = append(refused, r)
		}
	}
	var notes []string
	if len(refused) > 0 {
		fmt.Fprintln(w)
		notes = refusedTable(w, refused, notes)
	}
	if len(steady) > 0 {
		fmt.Fprintln(w)
		notes = steadyTable(w, steady, notes)
	}
	for i, n := range notes {
		fmt.Fprintf(w, "\n[%d] %s", i+1, n)
	}
	if len(notes) > 0 {
		fmt.Fprintln(w)
	}
}

// steadyTable writes the steady-state rows: new flows admitted into a
// table far from full.
func steadyTable(w io.Writer, rows []Row, notes []string) []string {
	fmt.Fprintln(w, "Steady state: every flow new and admitted, the table flushed before each flood.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| flood | tracer | new flows/s | vs untraced (range) | sender CPU/pkt vs untraced | BPF ns/run | BPF runs/flow | BPF ns/flow | tracer CPU ms/100k flows | tracer CPU % | peak RSS MiB | inserts counted / flows |")
	fmt.Fprintln(w, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	for _, r := range rows {
		var mark string
		notes, mark = footnotes(notes, r.Notes)
		ratio := ratioCell(r, true)
		fmt.Fprintf(w, "| %s | %s%s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
			r.Point, r.Kind.Describe(), mark, num(r.PPS, "%.0f"), ratio, num(r.SenderRatio, "%.2f"),
			num(r.NsPerRun, "%.0f"), num(r.RunsPerFlow, "%.2f"), num(r.NsPerFlow, "%.0f"), num(r.CPUPer100k, "%.0f"),
			num(r.CPUPercent, "%.1f"), num(r.RSSMiB, "%.1f"), num(r.InsertCapture, "%.3f"))
	}
	return notes
}

// footnotes appends a row's notes to the table's and returns the marks
// ([1] [2]...) that point to them.
func footnotes(notes, rowNotes []string) ([]string, string) {
	mark := ""
	for _, n := range rowNotes {
		notes = append(notes, n)
		mark += fmt.Sprintf(" [%d]", len(notes))
	}
	return notes, mark
}

// refusedTable writes the refused-flow rows.
func refusedTable(w io.Writer, rows []Row, notes []string) []string {
	fmt.Fprintln(w, "| sweep | flood | tracer | flood pps | vs untraced (range) | sender CPU/pkt vs untraced | BPF ns/run | BPF ns/drop | tracer CPU ms/100k drops | tracer CPU % | peak RSS MiB | capture | lost/run |")
	fmt.Fprintln(w, "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	for _, r := range rows {
		capture := num(r.Capture, "%.3f")
		if !math.IsNaN(r.CaptureMin) && r.CaptureMin < r.Capture-0.0005 {
			capture += fmt.Sprintf(" (min %.3f)", r.CaptureMin)
		}
		if !math.IsNaN(r.Header) {
			capture += fmt.Sprintf("; header %.3f", r.Header)
		}
		if !math.IsNaN(r.Streamed) {
			capture += fmt.Sprintf("; streamed %.3f", r.Streamed)
		}
		lost := num(r.Lost, "%.0f")
		if r.Kind == Untraced {
			capture, lost = "–", "–"
		}
		var mark string
		notes, mark = footnotes(notes, r.Notes)
		ratio := ratioCell(r, true)
		fmt.Fprintf(w, "| %s | %s | %s%s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
			r.Sweep, r.Point, r.Kind.Describe(), mark, num(r.PPS, "%.0f"), ratio, num(r.SenderRatio, "%.2f"),
			num(r.NsPerRun, "%.0f"), num(r.NsPerDrop, "%.0f"), num(r.CPUPer100k, "%.0f"), num(r.CPUPercent, "%.1f"),
			num(r.RSSMiB, "%.1f"), capture, lost)
	}
	return notes
}

func num(v float64, f string) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "–"
	}
	return fmt.Sprintf(f, v)
}

// Chart draws, one line per tracer, capture, flood-rate ratio and sender
// CPU per packet against the drop rate (left: the rate sweep, at the
// untraced flood's rate of each point) and against the number of distinct
// sources (right: the floods at the maximum rate), into a PNG.
func Chart(path, title string, rows []Row, kinds []Kind) error {
	rateX := map[string]float64{}
	for _, r := range rows {
		if r.Sweep == "rate" && r.Kind == Untraced && !math.IsNaN(r.PPS) {
			rateX[r.Point] = r.PPS / 1000
		}
	}
	if len(rateX) == 0 {
		return fmt.Errorf("no rate sweep to chart")
	}
	metrics := []struct {
		y     string
		value func(Row) float64
		min   float64
		max   float64
	}{
		{"capture (reported / kernel drops)", func(r Row) float64 { return r.Capture }, 0, 1.05},
		{"flood rate / untraced", func(r Row) float64 { return r.Ratio }, 0, 1.15},
		{"sender CPU per packet / untraced", func(r Row) float64 { return r.SenderRatio }, 0, math.NaN()},
	}
	axes := []struct {
		x   string
		in  func(Row) bool
		at  func(Row) float64
		log bool
	}{
		{"drop rate (thousand refused flows/s)", func(r Row) bool { return r.Sweep == "rate" }, func(r Row) float64 { return rateX[r.Point] }, false},
		{"distinct sources (at the maximum rate)", func(r Row) bool { return r.MaxRate && !r.Steady }, func(r Row) float64 { return float64(r.Distinct) }, true},
	}
	colors := []color.Color{
		color.RGBA{0x4d, 0x4d, 0x4d, 255}, color.RGBA{0x1f, 0x77, 0xb4, 255}, color.RGBA{0xff, 0x7f, 0x0e, 255},
		color.RGBA{0x2c, 0xa0, 0x2c, 255}, color.RGBA{0xd6, 0x27, 0x28, 255}, color.RGBA{0x94, 0x67, 0xbd, 255},
		color.RGBA{0x8c, 0x56, 0x4b, 255},
	}
	plots := make([][]*plot.Plot, len(metrics))
	for i, m := range metrics {
		for j, ax := range axes {
			p := plot.New()
			if i == 0 && j == 0 {
				p.Title.Text = title
			}
			p.X.Label.Text = ax.x
			p.Y.Label.Text = m.y
			p.Add(plotter.NewGrid())
			if ax.log {
				p.X.Scale = plot.LogScale{}
				p.X.Tick.Marker = plot.LogTicks{Prec: -1}
			} else {
				p.X.Min = 0
			}
			p.Y.Min = m.min
			if !math.IsNaN(m.max) {
				p.Y.Max = m.max
			}
			ci := 0
			for _, k := range kinds {
				if k == Untraced {
					continue
				}
				var xy plotter.XYs
				for _, r := range rows {
					if r.Kind != k || !ax.in(r) {
						continue
					}
					if v := m.value(r); !math.IsNaN(v) {
						xy = append(xy, plotter.XY{X: ax.at(r), Y: v})
					}
				}
				c := colors[ci%len(colors)]
				ci++
				if len(xy) == 0 {
					continue
				}
				slices.SortFunc(xy, func(a, b plotter.XY) int { return cmpFloat(a.X, b.X) })
				line, points, err := plotter.NewLinePoints(xy)
				if err != nil {
					return err
				}
				line.Color, points.Color = c, c
				line.Width = vg.Points(1.5)
				points.Shape = draw.CircleGlyph{}
				p.Add(line, points)
				p.Legend.Add(k.Describe(), line, points)
			}
			p.Legend.Top = false // the lines sit near 1: legends go underneath
			p.Legend.Left = true
			p.Legend.TextStyle.Font.Size = vg.Points(7)
			plots[i] = append(plots[i], p)
		}
	}
	const w, h = 14 * vg.Inch, 13 * vg.Inch
	img := vgimg.New(w, h)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: len(metrics), Cols: len(axes), PadX: vg.Millimeter * 8, PadY: vg.Millimeter * 6,
		PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 4}
	canvases := plot.Align(plots, tiles, dc)
	for i := range plots {
		for j := range plots[i] {
			plots[i][j].Draw(canvases[i][j])
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Header is the results' first line.
func Header(kernel, backend string, cpus int, extra ...string) string {
	parts := append([]string{fmt.Sprintf("kernel %s, backend %s, %d CPUs", kernel, backend, cpus)}, extra...)
	return "**" + strings.Join(parts, ", ") + "**"
}
