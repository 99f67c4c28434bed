package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/cttrace/cttrace/pkg/output"
	"github.com/cttrace/cttrace/pkg/probe"
	"github.com/cttrace/cttrace/pkg/session"
	"github.com/cttrace/cttrace/pkg/top"
	"github.com/cttrace/cttrace/pkg/topk"
)

func topCommand() *cli.Command {
	return &cli.Command{
		Name:  "top-sources",
		Usage: "show, live, which sources are refused and which fill the conntrack table",
		Description: "Counts every conntrack event per source (or prefix) in the kernel, in a map\n" +
			"bounded by --max-sources, and shows the heaviest every --interval. On a\n" +
			"terminal the view refreshes in place; otherwise (or with --output json) one\n" +
			"snapshot is written per interval. Sources past the bound are counted in \"other\".\n\n" +
			"Examples:\n" +
			"   cttrace top-sources\n" +
			"   cttrace top-sources --group-v4 /24 --sort held --netns /run/netns/edge\n" +
			"   cttrace top-sources -o json --interval 10s > top.ndjson\n" +
			"   cttrace top-sources --once -o json | jq '.rows[0]'\n" +
			"   cttrace top-sources --replay events.json --group-v4 /24 --once",
		Flags: append(traceFlags(),
			outputFlag(),
			&cli.DurationFlag{Name: "interval", Value: time.Second, Usage: "refresh every `DURATION`"},
			&cli.StringFlag{Name: "sort", Value: "drops", Usage: "rank by `KEY`: drops, inserts or held"},
			&cli.IntFlag{Name: "limit", Value: 20, Usage: "show the first `N` sources"},
			netnsFlag(),
			&cli.StringFlag{Name: "group-v4", Value: "/32", Usage: "group IPv4 sources by prefix length `/LEN`, like /24"},
			&cli.StringFlag{Name: "group-v6", Value: "/128", Usage: "group IPv6 sources by prefix length `/LEN`, like /64"},
			&cli.UintFlag{Name: "max-sources", Value: 65536, Usage: "track at most `N` sources in the kernel (bounds memory under spoofed floods)"},
			&cli.BoolFlag{Name: "once", Usage: "print one snapshot after one interval and exit"},
			&cli.StringFlag{Name: "replay", Usage: "rank the sources of a recorded stream (cttrace's JSON, as drops -o json or --events-file wrote it) from `PATH`\n" +
				"\t(-: standard input) instead of the kernel: a snapshot every --interval of its time, and one at its end"},
		),
		Action: runTop,
	}
}

// topOptions is the command line, validated.
type topOptions struct {
	trace    traceOptions
	format   string
	interval time.Duration
	view     top.Options
	sources  probe.SourceOptions
	once     bool
	replay   string // --replay
}

func parseTopOptions(c *cli.Context) (topOptions, error) {
	o := topOptions{once: c.Bool("once"), interval: c.Duration("interval"), replay: c.String("replay")}
	var err error
	if o.trace, err = parseTraceOptions(c); err != nil {
		return o, err
	}
	if o.format, err = outputFormat(c); err != nil {
		return o, err
	}
	if o.interval < 10*time.Millisecond {
		return o, invalidFlag("interval", o.interval.String(), "at least 10ms")
	}
	switch s := top.SortBy(c.String("sort")); s {
	case top.SortDrops, top.SortInserts, top.SortHeld:
		o.view.Sort = s
	default:
		return o, invalidFlag("sort", string(s), "drops, inserts or held")
	}
	if o.view.Limit = c.Int("limit"); o.view.Limit < 1 {
		return o, invalidFlag("limit", strconv.Itoa(o.view.Limit), "1 or more")
	}
	if o.view.Netns, err = parseNetnsFlag(c); err != nil {
		return o, err
	}
	max := c.Uint("max-sources")
	if max < 1 || max > 1<<24 {
		return o, invalidFlag("max-sources", strconv.FormatUint(uint64(max), 10), fmt.Sprintf("1 to %d", 1<<24))
	}
	o.view.Capacity = int(max)
	o.sources = probe.SourceOptions{Enabled: true, Max: uint32(max)}
	if o.sources.V4Bits, err = parsePrefixLen("group-v4", c.String("group-v4"), 32); err != nil {
		return o, err
	}
	if o.sources.V6Bits, err = parsePrefixLen("group-v6", c.String("group-v6"), 128); err != nil {
		return o, err
	}
	return o, nil
}

func parsePrefixLen(flag, s string, max int) (uint8, error) {
	digits, ok := strings.CutPrefix(s, "/")
	n, err := strconv.Atoi(digits)
	if !ok || err != nil || n < 1 || n > max {
		return 0, invalidFlag(flag, s, fmt.Sprintf("/1 to /%d", max))
	}
	return uint8(n), nil
}

// topMemoryLimit is the Go heap's soft limit for top-sources. Its live
// data is bounded (the kernel map's last read, the history, a snapshot) but
// the collector lets garbage grow to twice that before it runs; under a
// flood that is the difference between fitting the 64 MiB the README
// promises and not. Past the limit the collector runs more often instead.
const topMemoryLimit = 40 << 20

func runTop(c *cli.Context) error {
	o, err := parseTopOptions(c)
	if err != nil {
		return err
	}
	if o.replay != "" {
		return replayTop(o)
	}
	return watchTop(c.Context, o)
}

// replayTop shows a recorded stream as top-sources would have shown it
// live, with the same options: a snapshot at every --interval of the
// recording's own time (intervals without a record are skipped), and one
// at its end; --once shows only the last. It needs no privileges.
func replayTop(o topOptions) error {
	in, err := openReplay(o.replay)
	if err != nil {
		return err
	}
	defer in.Close()
	ignoreSIGPIPE()
	grouping := topk.Grouping{V4Bits: int(o.sources.V4Bits), V6Bits: int(o.sources.V6Bits)}
	rec := top.NewRecording(grouping, o.view.Capacity)
	view := output.TopView{Backend: "replay", Sort: o.view.Sort}
	out := bufio.NewWriter(os.Stdout)
	var agg *top.Aggregator
	var next, last time.Time
	show := func(at time.Time) error {
		snap, err := agg.Snapshot(at, rec, nil)
		if err != nil {
			return err
		}
		if o.format == "json" {
			err = view.WriteTopJSON(out, &snap)
		} else {
			err = view.WriteTopText(out, &snap)
		}
		if err != nil {
			return err
		}
		return out.Flush()
	}
	report, skipped := malformedLines(o.replay)
	err = output.ReadRecords(in, func(r *output.Record) error {
		at := r.Time()
		if agg == nil {
			if agg, err = top.New(o.view, grouping, at); err != nil {
				return err
			}
			next = at.Add(o.interval)
		}
		if !o.once && !at.Before(next) {
			if err := show(next); err != nil {
				return err
			}
			next = next.Add((at.Sub(next)/o.interval + 1) * o.interval)
		}
		if at.After(last) {
			last = at // records are in order per CPU, not across CPUs
		}
		switch {
		case r.Event != nil:
			rec.Event(r.Event)
		case r.Aggregate != nil:
			rec.Aggregate(r.Aggregate)
		case r.Summary != nil:
			view.Backend = r.Summary.Backend // the recording's
		}
		return nil
	}, skipped)
	if err == nil && agg != nil {
		err = show(last)
	}
	report()
	if closedPipe(err) {
		return nil
	}
	return err
}

// defaultTopOptions are top-sources' defaults, for `status --watch`.
func defaultTopOptions(format string, interval, duration time.Duration) topOptions {
	return topOptions{
		trace:    traceOptions{backend: probe.BackendAuto, duration: duration},
		format:   format,
		interval: interval,
		view:     top.Options{Sort: top.SortDrops, Limit: 20, Capacity: 65536},
		sources:  probe.SourceOptions{Enabled: true, Max: 65536, V4Bits: 32, V6Bits: 128},
	}
}

// watchTop is top-sources itself: the probes, the view, until ctx ends.
func watchTop(parent context.Context, o topOptions) error {
	debug.SetMemoryLimit(topMemoryLimit)
	ctx, cancel, s, err := startTrace(parent, o.trace, session.Config{Sources: o.sources})
	if err != nil {
		return err
	}
	defer cancel()
	defer s.Close()
	grouping := topk.Grouping{V4Bits: int(o.sources.V4Bits), V6Bits: int(o.sources.V6Bits)}
	sv, err := newSourceView(s, o.view, grouping, o.interval, func(_ string, err error) {
		fmt.Fprintf(os.Stderr, "cttrace: warning: %v\n", err)
	})
	if err != nil {
		return err
	}
	if err := writeReady(o.trace.readyFile, s.Backend); err != nil {
		return err
	}

	view := output.TopView{Backend: string(s.Backend), Sort: o.view.Sort}
	out := bufio.NewWriter(os.Stdout)
	// On a terminal the view is redrawn in place (not with --once, whose
	// snapshot must stay on the screen after exit).
	var term *liveTerminal
	if o.format == "text" && !o.once && isTerminal(os.Stdout) {
		term = openLive(os.Stdin, os.Stdout)
		defer term.close()
	}
	var last *top.Snapshot
	draw := func(snap *top.Snapshot) error {
		var err error
		switch {
		case o.format == "json":
			err = view.WriteTopJSON(out, snap)
		case term != nil:
			err = view.WriteTopFrame(out, snap, term.size())
		default:
			err = view.WriteTopText(out, snap)
		}
		if err == nil {
			err = out.Flush()
		}
		last = snap
		return err
	}
	var keys <-chan byte
	var resized <-chan os.Signal
	if term != nil {
		keys, resized = term.keys, term.resized
	}
	ticker := time.NewTicker(o.interval)
	defer ticker.Stop()
	// The kernel's admission of new sources follows a flood's rate faster
	// than the view refreshes (probe.Sampler).
	adjust := time.NewTicker(100 * time.Millisecond)
	defer adjust.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case key := <-keys:
			if quits(key) {
				return nil
			}
		case <-resized:
			if last != nil {
				if err := draw(last); err != nil {
					return err
				}
			}
		case now := <-adjust.C:
			if err := sv.sampler.Adjust(now); err != nil {
				return err
			}
		case now := <-ticker.C:
			snap, err := sv.snapshot(now)
			if err != nil {
				return err
			}
			err = draw(&snap)
			if closedPipe(err) {
				return nil
			}
			if err != nil || o.once {
				return err
			}
		}
	}
}

// isTerminal reports whether f is a terminal, where the view refreshes in
// place instead of appending snapshots.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// sourceView is top-sources' reading of the kernel, shared with serve: the
// aggregator of sources, the sampler that keeps the kernel's per-source map
// from churning under a flood (Adjust it every 100 ms: it follows a flood
// faster than views refresh), and the tables.
type sourceView struct {
	s       *session.Session
	agg     *top.Aggregator
	sampler *probe.Sampler
	tables  *top.TableWatch
}

// newSourceView starts a view read every interval; warn hears what could
// not be read (what names it) and leaves figures unknown.
func newSourceView(s *session.Session, o top.Options, g topk.Grouping, interval time.Duration, warn func(what string, err error)) (*sourceView, error) {
	agg, err := top.New(o, g, time.Now())
	if err != nil {
		return nil, err
	}
	sampler, err := s.Probe.NewSampler(probe.SourcesMap, interval)
	if err != nil {
		return nil, err
	}
	// The tracepoint backend sees no inserts or deletes: held comes from a
	// fresh dump at refreshes instead.
	tables := agg.WatchTables(g, s.Backend == probe.BackendTracepoint, func(err error) { warn("tables", err) })
	return &sourceView{s: s, agg: agg, sampler: sampler, tables: tables}, nil
}

// snapshot reads the kernel for a snapshot at now.
func (v *sourceView) snapshot(now time.Time) (top.Snapshot, error) {
	if err := session.RequireConntrack(); err != nil {
		return top.Snapshot{}, probe.ErrConntrackGone
	}
	snap, err := v.agg.Snapshot(now, v.s, v.tables.Refresh(now))
	if err != nil {
		return snap, err
	}
	snap.SampleShift = v.sampler.Shift()
	snap.Bounded = snap.Bounded || v.sampler.Sampled()
	snap.Lost, err = v.s.Probe.Lost()
	return snap, err
}
