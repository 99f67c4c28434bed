package output

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/cttrace/cttrace/pkg/top"
)

// NewTop writes top-sources' snapshots, for logs and pipes: as aligned
// text, one after the other separated by a blank line, or as one JSON
// record a line (docs/top-sources.md).
func NewTop(w io.Writer, f Format) Writer[*top.Snapshot] {
	return newDocument(w, f, writeTopText, topRecord)
}

func writeTopText(w io.Writer, s *top.Snapshot) error {
	_, err := io.WriteString(w, strings.Join(topLines(s, len(s.Rows)), "\n")+"\n\n")
	return err
}

// Screen is the size of the terminal a live view fills.
type Screen struct {
	Width, Height int
}

// Terminal control, as top(1) draws: home the cursor, clear to the end of
// a line, clear to the end of the screen, reverse video.
const (
	cursorHome  = "\x1b[H"
	clearLine   = "\x1b[K"
	clearBelow  = "\x1b[J"
	reverse     = "\x1b[7m"
	normalVideo = "\x1b[m"
)

// TopKeys is the footer of the live view: the keys it answers to.
const TopKeys = "q quit"

// NewTopFrame draws top-sources' snapshots on a terminal of the size
// screen says (asked at every frame), each over the previous one
// (WriteTopFrame).
func NewTopFrame(w io.Writer, screen func() Screen) Writer[*top.Snapshot] {
	return newDocument(w, Text, func(w io.Writer, s *top.Snapshot) error { return WriteTopFrame(w, s, screen()) }, nil)
}

// WriteTopFrame draws one snapshot over the previous one without clearing
// the screen first (no flicker): each line is overwritten and what is left
// of it cleared, then everything below. Lines are cut at the width; source
// rows that do not fit the height are left out (the header, the namespace
// lines and "other" stay, so the sums still add up); the last line is the
// footer with the keys.
func WriteTopFrame(w io.Writer, s *top.Snapshot, scr Screen) error {
	fixed := len(topLines(s, 0)) + 1 // everything but the rows, and the footer
	lines := topLines(s, max(0, min(len(s.Rows), scr.Height-fixed)))
	var b strings.Builder
	b.WriteString(cursorHome)
	for _, l := range lines {
		b.WriteString(cut(l, scr.Width))
		b.WriteString(clearLine + "\n")
	}
	footer := TopKeys
	if shown := len(lines) - (fixed - 1); shown < len(s.Rows) {
		footer += fmt.Sprintf("  (%d of %d rows: a taller terminal shows more)", shown, len(s.Rows))
	}
	b.WriteString(reverse + cut(footer, scr.Width) + normalVideo + clearLine + clearBelow)
	_, err := io.WriteString(w, b.String())
	return err
}

// cut keeps the first width characters of l (all of them if width <= 0).
func cut(l string, width int) string {
	if width <= 0 || len(l) <= width {
		return l
	}
	return l[:width]
}

// topLines is one snapshot as text lines, with at most rows source rows.
func topLines(s *top.Snapshot, rows int) []string {
	var b strings.Builder
	fmt.Fprintf(&b, "cttrace top-sources  %s  every %s  backend %s  sorted by %s\n",
		s.Time.Format("15:04:05"), round(s.Interval), s.Backend, s.Sort)
	fmt.Fprintf(&b, "sources tracked %d of %d", s.Tracked, s.Capacity)
	if s.Bounded {
		b.WriteString("  (bound reached: sources pushed out are counted in \"other\")")
	}
	if s.SampleShift > 0 {
		fmt.Fprintf(&b, "  flood: new sources sampled 1 in %d", uint64(1)<<s.SampleShift)
	}
	fmt.Fprintf(&b, "  lost events %d\n\n", s.Lost)

	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "NETNS\tENTRIES/MAX\tFILL\tDROPS/s\tEARLY/s\tGC/s\tINSERTS/s\t")
	for _, ns := range s.Namespaces {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t\n", ns.Netns.Inode, entries(ns), fill(ns.Fill()),
			rate(ns.Rate.Drops(), s.Interval), rate(ns.Rate.EarlyDrops(), s.Interval), rate(ns.Rate.GCEvicted(), s.Interval),
			rate(ns.Rate.Inserts(), s.Interval))
	}
	tw.Flush()
	b.WriteString("\n")

	tw = tabwriter.NewWriter(&b, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "NETNS\tSOURCE\tDROPS/s\tDROPS\tEVICTED\tINSERTS/s\tHELD\tSHARE\tLAST DROP\t")
	for i := range s.Rows[:rows] {
		r := &s.Rows[i]
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%d\t%s\t%d\t%s\t%s\t\n", r.Netns.Inode, r.Prefix, rate(r.Rate.Drops(), s.Interval), r.Total.Drops(),
			r.Total.Evicted(), rate(r.Rate.Inserts(), s.Interval), r.Total.Held, percent(r.Share), lastDrop(r))
	}
	o := &s.Other
	fmt.Fprintf(tw, "\tother\t%s\t%d\t%d\t%s\t\t\t\t\n", rate(o.Rate.Drops(), s.Interval), o.Total.Drops(), o.Total.Evicted(), rate(o.Rate.Inserts(), s.Interval))
	tw.Flush()
	return strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
}

func round(d time.Duration) time.Duration { return d.Round(time.Millisecond) }

func entries(ns top.Namespace) string {
	if ns.Entries < 0 {
		return fmt.Sprintf("-/%d", ns.Max)
	}
	return fmt.Sprintf("%d/%d", ns.Entries, ns.Max)
}

func fill(f float64) string {
	if f < 0 {
		return "-"
	}
	return percent(f)
}

func percent(f float64) string { return fmt.Sprintf("%.1f%%", 100*f) }

func rate(n uint64, interval time.Duration) string {
	return fmt.Sprintf("%.0f", top.PerSec(n, interval))
}

func lastDrop(r *top.Row) string {
	if r.LastReason == "" {
		return "-"
	}
	return string(r.LastReason) + " " + r.LastDrop.Format("15:04:05")
}

// topJSON is the NDJSON record of one snapshot (docs/top-sources.md).
type topJSON struct {
	Schema    int             `json:"schema"`
	Type      string          `json:"type"`
	Time      string          `json:"time"`
	IntervalS float64         `json:"interval_s"`
	Backend   string          `json:"backend"`
	Sort      string          `json:"sort"`
	Tracked   int             `json:"tracked"`
	Capacity  int             `json:"capacity"`
	Bounded   bool            `json:"bounded"`
	Sampling  uint64          `json:"source_sampling"`
	Lost      uint64          `json:"lost"`
	Netns     []topNetnsJSON  `json:"namespaces"`
	Rows      []topSourceJSON `json:"rows"`
	Other     topSourceJSON   `json:"other"`
}

type topNetnsJSON struct {
	Netns          uint32  `json:"netns"`
	NetnsID        uint64  `json:"netns_id"`
	Entries        int64   `json:"entries"`
	Max            uint32  `json:"max"`
	Fill           float64 `json:"fill"`
	DropsPerS      float64 `json:"drops_per_s"`
	EarlyDropsPerS float64 `json:"early_drops_per_s"`
	GCEvictsPerS   float64 `json:"gc_evictions_per_s"`
	InsertsPerS    float64 `json:"inserts_per_s"`
	Drops          uint64  `json:"drops"`
	EarlyDrops     uint64  `json:"early_drops"`
	GCEvicts       uint64  `json:"gc_evictions"`
	Inserts        uint64  `json:"inserts"`
}

type topSourceJSON struct {
	Netns       uint32  `json:"netns"`
	NetnsID     uint64  `json:"netns_id"`
	Source      string  `json:"source"`
	DropsPerS   float64 `json:"drops_per_s"`
	Drops       uint64  `json:"drops"`
	Evicted     uint64  `json:"evicted"`
	InsertsPerS float64 `json:"inserts_per_s"`
	Inserts     uint64  `json:"inserts"`
	Deletes     uint64  `json:"deletes"`
	Held        int64   `json:"held"`
	Err         uint64  `json:"err"`
	Share       float64 `json:"share"`
	LastReason  string  `json:"last_reason"`
	LastDrop    string  `json:"last_drop"`
}

// topRecord is one snapshot's NDJSON record.
func topRecord(s *top.Snapshot) any {
	rec := topJSON{Schema: SchemaVersion, Type: "top", Time: s.Time.UTC().Format(jsonTime), IntervalS: s.Interval.Seconds(),
		Backend: s.Backend, Sort: string(s.Sort), Tracked: s.Tracked, Capacity: s.Capacity, Bounded: s.Bounded, Sampling: uint64(1) << s.SampleShift, Lost: s.Lost,
		Netns: []topNetnsJSON{}, Rows: []topSourceJSON{}}
	for _, ns := range s.Namespaces {
		rec.Netns = append(rec.Netns, topNetnsJSON{Netns: ns.Netns.Inode, NetnsID: ns.Netns.ID, Entries: ns.Entries, Max: ns.Max, Fill: ns.Fill(),
			DropsPerS: top.PerSec(ns.Rate.Drops(), s.Interval), EarlyDropsPerS: top.PerSec(ns.Rate.EarlyDrops(), s.Interval),
			GCEvictsPerS: top.PerSec(ns.Rate.GCEvicted(), s.Interval), InsertsPerS: top.PerSec(ns.Rate.Inserts(), s.Interval),
			Drops: ns.Total.Drops(), EarlyDrops: ns.Total.EarlyDrops(), GCEvicts: ns.Total.GCEvicted(), Inserts: ns.Total.Inserts()})
	}
	for i := range s.Rows {
		rec.Rows = append(rec.Rows, sourceJSON(&s.Rows[i], s.Interval, s.Rows[i].Prefix.String()))
	}
	rec.Other = sourceJSON(&s.Other, s.Interval, "other")
	return rec
}

func sourceJSON(r *top.Row, interval time.Duration, source string) topSourceJSON {
	j := topSourceJSON{Netns: r.Netns.Inode, NetnsID: r.Netns.ID, Source: source, DropsPerS: top.PerSec(r.Rate.Drops(), interval), Drops: r.Total.Drops(),
		Evicted: r.Total.Evicted(), InsertsPerS: top.PerSec(r.Rate.Inserts(), interval), Inserts: r.Total.Inserts(), Deletes: r.Total.Deletes(),
		Held: r.Total.Held, Err: r.Err, Share: r.Share, LastReason: string(r.LastReason)}
	if !r.LastDrop.IsZero() {
		j.LastDrop = r.LastDrop.UTC().Format(jsonTime)
	}
	return j
}
