package main

import (
	"context"
	"iter"
	"os"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/output"
	"github.com/cttrace/cttrace/pkg/probe"
	"github.com/cttrace/cttrace/pkg/session"
	"github.com/cttrace/cttrace/pkg/stream"
)

func dropsCommand() *cli.Command {
	return &cli.Command{
		Name:  "drops",
		Usage: "print every packet conntrack refuses and every entry it evicts, live, with the reason",
		Description: "Streams table_full, alloc_failed, early_drop and insert_failed events as they\n" +
			"happen (insert, delete and clash_resolved with --reason). Text by default;\n" +
			"--output json writes NDJSON (docs/drops.md). Under a flood, past --stream-limit\n" +
			"events a second, the rest are counted per source in the kernel and printed as\n" +
			"aggregates once a second: every drop is printed, aggregated or reported lost.\n" +
			"Ctrl-C prints a summary on stderr.\n\n" +
			"Examples:\n" +
			"   cttrace drops --duration 60s\n" +
			"   cttrace drops -o json | vector --config siem.toml\n" +
			"   cttrace drops --reason table_full --src 203.0.113.0/24 --netns /run/netns/edge\n" +
			"   cttrace drops --reason insert,delete --count 100",
		Flags: slices.Concat(traceFlags("always"), []cli.Flag{
			outputFlag(),
			&cli.StringFlag{Name: "ring-size", Value: "4M", Usage: "kernel ring buffer `SIZE`: a power of two from the page size to 1G (K, M and G suffixes)"},
			&cli.StringSliceFlag{Name: "reason", Usage: "only events of `REASON` (repeatable or comma-separated): " + reasonNames()},
			netnsFlag(),
			&cli.StringSliceFlag{Name: "src", Usage: "only flows from `CIDR` (or one address; repeatable)"},
			&cli.StringSliceFlag{Name: "dst", Usage: "only flows to `CIDR` (or one address; repeatable)"},
			&cli.StringSliceFlag{Name: "proto", Usage: "only `PROTO`: tcp, udp, icmp, icmpv6, sctp, dccp, udplite, gre or a number (repeatable)"},
			&cli.Uint64Flag{Name: "count", Usage: "exit after printing `N` events (0: no limit)"},
			streamLimitFlag("print"),
			&cli.BoolFlag{Name: "utc", Usage: "print times in UTC (text output)"},
			&cli.StringFlag{Name: "replay", Usage: "read a recorded stream (cttrace's JSON, as -o json or --events-file wrote it) from `PATH` (-: standard input) instead of the kernel, with the same filters and output"},
		}, eventsFileFlags()),
		Action: runDrops,
	}
}

// dropsOptions is the command line, validated.
type dropsOptions struct {
	trace   traceOptions
	format  output.Format
	stream  stream.Options
	reasons []event.Reason // streamed by the kernel
	limit   probe.StreamOptions
	utc     bool
	replay  string // --replay
	events  eventsFileOptions
}

func parseDropsOptions(c *cli.Context) (dropsOptions, error) {
	o := dropsOptions{utc: c.Bool("utc"), replay: c.String("replay")}
	o.stream.Count = c.Uint64("count")
	var err error
	if o.trace, err = parseTraceOptions(c); err != nil {
		return o, err
	}
	if o.trace.ringBytes, err = parseRingSize(c.String("ring-size")); err != nil {
		return o, err
	}
	if o.events, err = parseEventsFileOptions(c); err != nil {
		return o, err
	}
	if o.format, err = outputFormat(c); err != nil {
		return o, err
	}
	o.limit.Limit = uint32(min(c.Uint("stream-limit"), 1<<31))
	if o.reasons, o.stream.Filter.Reasons, err = parseReasons(c); err != nil {
		return o, err
	}
	if o.stream.Filter.Netns, err = parseNetnsFlag(c); err != nil {
		return o, err
	}
	for ns := range o.stream.Filter.Netns {
		o.limit.Netns = append(o.limit.Netns, ns)
	}
	if o.stream.Filter.Src, err = parseCIDRs("src", c.StringSlice("src")); err != nil {
		return o, err
	}
	if o.stream.Filter.Dst, err = parseCIDRs("dst", c.StringSlice("dst")); err != nil {
		return o, err
	}
	o.stream.Filter.Protos, err = parseSet("proto", c.StringSlice("proto"), event.ParseProto)
	return o, err
}

// parseReasons reads --reason: the reasons streamed (by default drops and
// evictions) and the filter's set (nil: all of them).
func parseReasons(c *cli.Context) ([]event.Reason, map[event.Reason]bool, error) {
	rs := splitList(c.StringSlice("reason"))
	if len(rs) == 0 {
		return event.RefusalsAndEvictions(), nil, nil
	}
	var reasons []event.Reason
	set := map[event.Reason]bool{}
	for _, s := range rs {
		r, err := event.ParseReason(s)
		if err != nil {
			return nil, nil, invalidFlag("reason", s, suggestValue(s, reasonNames()))
		}
		reasons = append(reasons, r)
		set[r] = true
	}
	return reasons, set, nil
}

func reasonNames() string {
	var names []string
	for _, r := range event.Reasons() {
		names = append(names, string(r))
	}
	return strings.Join(names, ", ")
}

func runDrops(c *cli.Context) error {
	o, err := parseDropsOptions(c)
	if err != nil {
		return err
	}
	ignoreSIGPIPE()
	w := output.NewStream(os.Stdout, o.format, output.StreamOptions{ECS: o.events.ecs, UTC: o.utc})
	o.stream.Summary = os.Stderr
	if o.replay != "" {
		return replayDrops(o, w)
	}
	// Opened before attaching: a wrong path costs nothing in the kernel.
	file, err := o.events.open()
	if err != nil {
		return err
	}
	if file != nil {
		defer file.Close()
		tee := output.NewTee(w, file, o.events.ecs)
		defer reopenOnHangup(file)()
		defer warnEventsFile(tee)
		w = tee
	}
	ctx, cancel, s, err := startTrace(c.Context, o.trace, session.Config{Reasons: o.reasons, Stream: o.limit})
	if err != nil {
		return err
	}
	defer cancel()
	defer s.Close()
	if err := writeReady(o.trace.readyFile, s.Backend()); err != nil {
		return err
	}
	if err := stream.Run(ctx, s, w, o.stream); !closedPipe(err) {
		return err
	}
	return nil
}

// replayDrops shows a recorded stream as a live run would have shown it:
// the same filters, --count and output.
func replayDrops(o dropsOptions, w output.Writer[*event.Record]) error {
	return replay(o.replay, func(records iter.Seq2[*event.Record, error]) error {
		return stream.Run(context.Background(), stream.Recording(records), w, o.stream)
	})
}
