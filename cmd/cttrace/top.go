package main

import (
	"context"
	"fmt"
	"iter"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/output"
	"github.com/cttrace/cttrace/pkg/probe"
	"github.com/cttrace/cttrace/pkg/session"
	"github.com/cttrace/cttrace/pkg/top"
)

func topCommand() *cli.Command {
	def := top.DefaultOptions()
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
		Flags: append(traceFlags("always"),
			outputFlag(),
			&cli.DurationFlag{Name: "interval", Value: def.Interval, Usage: "refresh every `DURATION`"},
			&cli.StringFlag{Name: "sort", Value: string(def.Sort), Usage: "rank by `KEY`: drops, inserts or held"},
			&cli.IntFlag{Name: "limit", Value: def.Limit, Usage: "show the first `N` sources"},
			netnsFlag(),
			&cli.StringFlag{Name: "group-v4", Value: "/32", Usage: "group IPv4 sources by prefix length `/LEN`, like /24"},
			&cli.StringFlag{Name: "group-v6", Value: "/128", Usage: "group IPv6 sources by prefix length `/LEN`, like /64"},
			&cli.UintFlag{Name: "max-sources", Value: uint(def.Capacity), Usage: "track at most `N` sources in the kernel (bounds memory under spoofed floods)"},
			&cli.BoolFlag{Name: "once", Usage: "print one snapshot after one interval and exit"},
			&cli.StringFlag{Name: "replay", Usage: "rank the sources of a recorded stream (cttrace's JSON, as drops -o json or --events-file wrote it) from `PATH`\n" +
				"\t(-: standard input) instead of the kernel: a snapshot every --interval of its time, and one at its end"},
		),
		Action: runTop,
	}
}

// topOptions is the command line, validated.
type topOptions struct {
	trace  traceOptions
	format output.Format
	view   top.Options
	replay string // --replay
}

func parseTopOptions(c *cli.Context) (topOptions, error) {
	o := topOptions{view: top.DefaultOptions(), replay: c.String("replay")}
	o.view.Once, o.view.Interval = c.Bool("once"), c.Duration("interval")
	var err error
	if o.trace, err = parseTraceOptions(c); err != nil {
		return o, err
	}
	if o.format, err = outputFormat(c); err != nil {
		return o, err
	}
	if o.view.Interval < 10*time.Millisecond {
		return o, invalidFlag("interval", o.view.Interval.String(), "at least 10ms")
	}
	var ok bool
	if o.view.Sort, ok = top.ParseSortBy(c.String("sort")); !ok {
		return o, invalidFlag("sort", c.String("sort"), "drops, inserts or held")
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
	if o.view.Grouping.V4Bits, err = parsePrefixLen("group-v4", c.String("group-v4"), 32); err != nil {
		return o, err
	}
	o.view.Grouping.V6Bits, err = parsePrefixLen("group-v6", c.String("group-v6"), 128)
	return o, err
}

func parsePrefixLen(flag, s string, max int) (int, error) {
	digits, ok := strings.CutPrefix(s, "/")
	n, err := strconv.Atoi(digits)
	if !ok || err != nil || n < 1 || n > max {
		return 0, invalidFlag(flag, s, fmt.Sprintf("/1 to /%d", max))
	}
	return n, nil
}

// sourceOptions is what the kernel counts per source for the view.
func sourceOptions(o top.Options) probe.SourceOptions {
	return probe.SourceOptions{Enabled: true, Max: uint32(o.Capacity), V4Bits: uint8(o.Grouping.V4Bits), V6Bits: uint8(o.Grouping.V6Bits),
		ReadEvery: o.Interval}
}

// topMemoryLimit is the Go heap's soft limit for the commands that rank
// sources (top-sources, status --watch, serve). Their live data is bounded
// (the kernel map's last read, the history, a snapshot) but the collector
// lets garbage grow to twice that before it runs; under a flood that is the
// difference between fitting the 64 MiB docs/performance.md promises and
// not. Past the limit the collector runs more often instead.
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

// replayTop ranks the sources of a recording as top-sources would have
// live (top.Replay).
func replayTop(o topOptions) error {
	w := output.NewTop(os.Stdout, o.format)
	return replay(o.replay, func(records iter.Seq2[*event.Record, error]) error {
		return top.Replay(records, o.view, flushed(w))
	})
}

// watchTop is top-sources itself: the probes and the live view, until ctx
// ends, the view's one snapshot (--once), or q on a terminal.
func watchTop(parent context.Context, o topOptions) error {
	debug.SetMemoryLimit(topMemoryLimit)
	ctx, cancel, s, err := startTrace(parent, o.trace, session.Config{Sources: sourceOptions(o.view)})
	if err != nil {
		return err
	}
	defer cancel()
	defer s.Close()
	warn := func(_ string, err error) { fmt.Fprintf(os.Stderr, "cttrace: warning: %v\n", err) }
	live, err := top.NewLive(s, o.view, warn)
	if err != nil {
		return err
	}
	// Ready once the tables are read: what they held is counted from here.
	if err := writeReady(o.trace.readyFile, s.Backend()); err != nil {
		return err
	}
	w := output.NewTop(os.Stdout, o.format)
	var redraw <-chan struct{}
	// On a terminal the view is redrawn in place (not with --once, whose
	// snapshot must stay on the screen after exit).
	if o.format == output.Text && !o.view.Once && isTerminal(os.Stdout) {
		term := openLive(os.Stdin, os.Stdout, cancel)
		defer term.close()
		w, redraw = output.NewTopFrame(os.Stdout, term.size), term.resized
	}
	err = top.Watch(ctx, live, flushed(w), redraw)
	if closedPipe(err) {
		return nil
	}
	return err
}

// flushed writes each value to w and flushes it: a view shows each
// snapshot as it comes.
func flushed[T any](w output.Writer[T]) func(T) error {
	return func(v T) error {
		if err := w.Write(v); err != nil {
			return err
		}
		return w.Flush()
	}
}
