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
	Kind         Kind
	Rounds       int
	PPS          float64 // flood rate, statistics off
	Ratio        float64 // PPS / untraced PPS of the same round
	SenderRatio  float64 // flooding process's CPU per packet / untraced's, same round
	SenderUs     float64 // flooding process's CPU per packet, µs
	NsPerRun     float64 // BPF run time / runs (statistics on); NaN if none
	NsPerDrop    float64 // BPF run time / kernel drops (statistics on)
	CPUPer100k   float64 // tracer user+system ms per 100,000 kernel drops
	RSSMiB       float64 // tracer peak RSS
	Capture      float64 // reported / kernel drops
	CaptureMin   float64
	Header       float64 // top-sources: namespace-line drops / kernel drops; NaN otherwise
	Streamed     float64 // drops: streamed one by one / kernel drops; NaN otherwise
	Lost         float64 // events lost per run
	Notes        []string
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
			r := Row{Sweep: p.Sweep, Point: p.Label, Kind: k, NsPerRun: math.NaN(), NsPerDrop: math.NaN(),
				CPUPer100k: math.NaN(), RSSMiB: math.NaN(), Capture: math.NaN(), CaptureMin: math.NaN(), Header: math.NaN(), Streamed: math.NaN(),
				Ratio: math.NaN(), SenderRatio: math.NaN()}
			var pps, ratio, sender, senderUs, nsRun, nsDrop, cpu, rss, capt, hdr, streamed, lost []float64
			for _, s := range samples {
				if s.Sweep != p.Sweep || s.Point != p.Label || s.Kind != k {
					continue
				}
				r.Rounds++
				pps = append(pps, s.PPS)
				if s.Packets > 0 {
					senderUs = append(senderUs, float64(s.SenderCPU.Microseconds())/float64(s.Packets))
				}
				if u, ok := untraced[key{s.Sweep, s.Point, s.Round}]; ok && u.PPS > 0 {
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
			r.Capture, r.Header, r.Streamed, r.Lost = median(capt), median(hdr), median(streamed), median(lost)
			if len(capt) > 0 {
				r.CaptureMin = slices.Min(capt)
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

// Markdown writes the rows as one table.
func Markdown(w io.Writer, header string, rows []Row) {
	fmt.Fprintln(w, header)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| sweep | flood | tracer | flood pps | vs untraced | sender CPU/pkt vs untraced | BPF ns/run | BPF ns/drop | tracer CPU ms/100k drops | peak RSS MiB | capture | lost/run |")
	fmt.Fprintln(w, "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	var notes []string
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
		mark := ""
		for _, n := range r.Notes {
			notes = append(notes, n)
			mark += fmt.Sprintf(" [%d]", len(notes))
		}
		fmt.Fprintf(w, "| %s | %s | %s%s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
			r.Sweep, r.Point, r.Kind.Describe(), mark, num(r.PPS, "%.0f"), num(r.Ratio, "%.2f"), num(r.SenderRatio, "%.2f"),
			num(r.NsPerRun, "%.0f"), num(r.NsPerDrop, "%.0f"), num(r.CPUPer100k, "%.0f"), num(r.RSSMiB, "%.1f"), capture, lost)
	}
	for i, n := range notes {
		fmt.Fprintf(w, "\n[%d] %s", i+1, n)
	}
	if len(notes) > 0 {
		fmt.Fprintln(w)
	}
}

func num(v float64, f string) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "–"
	}
	return fmt.Sprintf(f, v)
}

// Chart draws capture, flood-rate ratio and sender CPU per packet against
// the drop rate (the untraced flood's rate at each point of the rate
// sweep), one line per tracer, into a PNG.
func Chart(path, title string, rows []Row, kinds []Kind) error {
	var pts []string
	x := map[string]float64{}
	for _, r := range rows {
		if r.Sweep == "rate" && r.Kind == Untraced && !math.IsNaN(r.PPS) {
			pts = append(pts, r.Point)
			x[r.Point] = r.PPS / 1000
		}
	}
	if len(pts) == 0 {
		return fmt.Errorf("no rate sweep to chart")
	}
	panels := []struct {
		y     string
		value func(Row) float64
	}{
		{"capture (reported / kernel drops)", func(r Row) float64 { return r.Capture }},
		{"flood rate / untraced", func(r Row) float64 { return r.Ratio }},
		{"sender CPU per packet / untraced", func(r Row) float64 { return r.SenderRatio }},
	}
	colors := []color.Color{
		color.RGBA{0x4d, 0x4d, 0x4d, 255}, color.RGBA{0x1f, 0x77, 0xb4, 255}, color.RGBA{0xff, 0x7f, 0x0e, 255},
		color.RGBA{0x2c, 0xa0, 0x2c, 255}, color.RGBA{0xd6, 0x27, 0x28, 255}, color.RGBA{0x94, 0x67, 0xbd, 255},
	}
	var plots [][]*plot.Plot
	for i, pn := range panels {
		p := plot.New()
		if i == 0 {
			p.Title.Text = title
		}
		p.X.Label.Text = "drop rate (thousand refused flows/s; untraced rate at each point)"
		p.Y.Label.Text = pn.y
		p.Add(plotter.NewGrid())
		ci := 0
		for _, k := range kinds {
			if k == Untraced {
				continue
			}
			var xy plotter.XYs
			for _, r := range rows {
				if r.Sweep != "rate" || r.Kind != k {
					continue
				}
				v := pn.value(r)
				if math.IsNaN(v) {
					continue
				}
				xy = append(xy, plotter.XY{X: x[r.Point], Y: v})
			}
			if len(xy) == 0 {
				continue
			}
			line, points, err := plotter.NewLinePoints(xy)
			if err != nil {
				return err
			}
			c := colors[ci%len(colors)]
			ci++
			line.Color, points.Color = c, c
			line.Width = vg.Points(1.5)
			points.Shape = draw.CircleGlyph{}
			p.Add(line, points)
			p.Legend.Add(k.Describe(), line, points)
		}
		p.Legend.Top = false // the lines sit near 1: legends go underneath
		p.Legend.Left = true
		p.Legend.TextStyle.Font.Size = vg.Points(8)
		if i == 0 {
			p.Y.Min, p.Y.Max = 0, 1.05
		}
		if i == 1 {
			p.Y.Min, p.Y.Max = 0, 1.15
		}
		if i == 2 {
			p.Y.Min = 0
		}
		p.X.Min = 0
		plots = append(plots, []*plot.Plot{p})
	}
	const w, h = 9 * vg.Inch, 13 * vg.Inch
	img := vgimg.New(w, h)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: len(plots), Cols: 1, PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 6, PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 4}
	canvases := plot.Align(plots, tiles, dc)
	for i := range plots {
		plots[i][0].Draw(canvases[i][0])
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

// Header is the results' first line.
func Header(kernel, backend string, cpus int, extra ...string) string {
	parts := append([]string{fmt.Sprintf("kernel %s, backend %s, %d CPUs", kernel, backend, cpus)}, extra...)
	return "**" + strings.Join(parts, ", ") + "**"
}
