package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/output"
	"github.com/cttrace/cttrace/pkg/probe"
	"github.com/cttrace/cttrace/pkg/session"
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
		Flags: slices.Concat(traceFlags(), []cli.Flag{
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

// traceFlags are the flags of every command that attaches probes.
func traceFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "backend", Value: "auto", Usage: "use `BACKEND`: auto, fentry, kprobe or tracepoint (see cttrace features)"},
		&cli.DurationFlag{Name: "duration", Usage: "exit after `DURATION` (for example 30s; 0: until Ctrl-C)"},
		&cli.StringFlag{Name: "ready-file", Usage: "write `PATH` once the probes are attached (for scripts)"},
	}
}

func reasonNames() string {
	var names []string
	for _, r := range event.Reasons() {
		names = append(names, string(r))
	}
	return strings.Join(names, ", ")
}

// dropsOptions is the command line, validated.
type dropsOptions struct {
	trace   traceOptions
	format  string
	filter  event.Filter
	reasons []event.Reason
	stream  probe.StreamOptions
	count   uint64
	utc     bool
	replay  string // --replay
	events  eventsFileOptions
}

// traceOptions are the validated traceFlags.
type traceOptions struct {
	backend   probe.Backend
	duration  time.Duration
	readyFile string
	ringBytes uint32
}

func parseTraceOptions(c *cli.Context) (traceOptions, error) {
	var o traceOptions
	var err error
	if o.backend, err = probe.ParseBackend(c.String("backend")); err != nil {
		return o, invalidFlag("backend", c.String("backend"), "auto, fentry, kprobe or tracepoint")
	}
	if o.duration = c.Duration("duration"); o.duration < 0 {
		return o, invalidFlag("duration", o.duration.String(), "0 or more")
	}
	if o.readyFile = c.String("ready-file"); o.readyFile != "" {
		// Found out now, not after the probes are attached.
		if _, err := os.Stat(filepath.Dir(o.readyFile)); err != nil {
			return o, flagValueError("ready-file", err)
		}
	}
	return o, nil
}

func parseDropsOptions(c *cli.Context) (dropsOptions, error) {
	o := dropsOptions{count: c.Uint64("count"), utc: c.Bool("utc")}
	var err error
	if o.trace, err = parseTraceOptions(c); err != nil {
		return o, err
	}
	if o.trace.ringBytes, err = parseRingSize(c.String("ring-size")); err != nil {
		return o, err
	}
	o.replay = c.String("replay")
	if o.events, err = parseEventsFileOptions(c); err != nil {
		return o, err
	}
	if o.format, err = outputFormat(c); err != nil {
		return o, err
	}
	o.stream.Limit = uint32(min(c.Uint("stream-limit"), 1<<31))
	o.reasons = event.RefusalsAndEvictions()
	if rs := splitList(c.StringSlice("reason")); len(rs) > 0 {
		o.reasons = nil
		o.filter.Reasons = map[event.Reason]bool{}
		for _, s := range rs {
			r, err := event.ParseReason(s)
			if err != nil {
				return o, invalidFlag("reason", s, suggestValue(s, reasonNames()))
			}
			o.reasons = append(o.reasons, r)
			o.filter.Reasons[r] = true
		}
	}
	if o.filter.Netns, err = parseNetnsFlag(c); err != nil {
		return o, err
	}
	for ns := range o.filter.Netns {
		o.stream.Netns = append(o.stream.Netns, ns)
	}
	if o.filter.Src, err = parseCIDRs("src", c.StringSlice("src")); err != nil {
		return o, err
	}
	if o.filter.Dst, err = parseCIDRs("dst", c.StringSlice("dst")); err != nil {
		return o, err
	}
	for _, s := range splitList(c.StringSlice("proto")) {
		p, err := event.ParseProto(s)
		if err != nil {
			return o, flagValueError("proto", err)
		}
		if o.filter.Protos == nil {
			o.filter.Protos = map[uint8]bool{}
		}
		o.filter.Protos[p] = true
	}
	return o, nil
}

func runDrops(c *cli.Context) error {
	o, err := parseDropsOptions(c)
	if err != nil {
		return err
	}
	if o.replay != "" {
		return replayDrops(o)
	}
	// Opened before attaching: a wrong path costs nothing in the kernel.
	file, err := o.events.open()
	if err != nil {
		return err
	}
	if file != nil {
		defer file.Close()
	}
	ctx, cancel, s, err := startTrace(c.Context, o.trace, session.Config{Reasons: o.reasons, Stream: o.stream})
	if err != nil {
		return err
	}
	defer cancel()
	defer s.Close()
	if err := writeReady(o.trace.readyFile, s.Backend); err != nil {
		return err
	}

	w := newWriter(o.format, o.utc, o.events.ecs)
	if file != nil {
		ef := output.NewEventsFile(w, file, o.events.ecs)
		defer reopenOnHangup(file)()
		defer warnEventsFile(ef)
		w = ef
	}
	shown := uint64(0)
	err = s.Run(ctx, session.Handler{
		Event: func(ev *event.Event) error {
			if !o.filter.Match(ev) {
				return nil
			}
			if err := w.Event(ev); err != nil {
				return err
			}
			if shown++; o.count > 0 && shown >= o.count {
				return session.ErrStop
			}
			return nil
		},
		Idle: w.Flush,
		Aggregate: func(batch []event.Aggregate) error {
			for i := range batch {
				if !o.filter.MatchAggregate(&batch[i]) {
					continue
				}
				if err := w.Aggregate(&batch[i]); err != nil {
					return err
				}
			}
			return w.Flush()
		},
		Tick: func(lost uint64) error {
			if lost == 0 {
				return nil
			}
			if err := w.Lost(lost, s.Lost(), time.Now()); err != nil {
				return err
			}
			return w.Flush()
		},
	})
	if closedPipe(err) {
		return nil
	}
	if errors.Is(err, probe.ErrConntrackGone) {
		// The summary still says what was seen before; the status says
		// the run was cut short.
		if serr := writeSummary(s, w, o.format); serr != nil {
			return serr
		}
		return err
	}
	if err != nil {
		return err
	}
	return writeSummary(s, w, o.format)
}

// startTrace attaches the probes as cfg and the trace flags say, and
// returns the context the run lasts for: until Ctrl-C or SIGTERM, or for
// --duration counted from the moment the probes are attached (loading
// takes seconds on a slow machine, and that time is not traced). SIGPIPE
// is turned into EPIPE errors, so that `cttrace drops | head` ends cleanly.
func startTrace(parent context.Context, o traceOptions, cfg session.Config) (context.Context, context.CancelFunc, *session.Session, error) {
	ignoreSIGPIPE()
	ctx, stop := signalContext(parent)
	// Once stopping, a second Ctrl-C kills at once, as with any tool.
	context.AfterFunc(ctx, stop)
	cfg.Backend, cfg.RingBytes, cfg.Log = o.backend, o.ringBytes, os.Stderr
	s, err := session.Start(cfg)
	if err != nil {
		stop()
		return nil, nil, nil, err
	}
	if o.duration <= 0 {
		return ctx, stop, s, nil
	}
	ctx, cancel := context.WithTimeout(ctx, o.duration)
	return ctx, func() { cancel(); stop() }, s, nil
}

// writeReady tells scripts waiting on --ready-file that every event from
// now on will be seen.
func writeReady(path string, b probe.Backend) error {
	if path == "" {
		return nil
	}
	if err := os.WriteFile(path, []byte(string(b)+"\n"), 0o644); err != nil {
		return fmt.Errorf("write ready file: %w", err)
	}
	return nil
}

func newWriter(format string, utc, ecs bool) output.Writer {
	if format == "json" && ecs {
		return output.NewECS(os.Stdout)
	}
	if format == "json" {
		return output.NewJSON(os.Stdout)
	}
	t := output.NewText(os.Stdout)
	t.UTC = utc
	return t
}

// writeSummary prints what the kernel saw during the run on stderr, and in
// the JSON stream as its last record.
func writeSummary(s *session.Session, w output.Writer, format string) error {
	sum, err := summaryOf(s)
	if err != nil {
		return err
	}
	totals := sum.Events
	if format == "json" {
		if err := w.Summary(sum); err != nil && !closedPipe(err) {
			return err
		}
		if err := w.Flush(); err != nil && !closedPipe(err) {
			return err
		}
	} else if ef, ok := w.(*output.EventsFile); ok {
		ef.FileSummary(sum) // the file is JSON whatever stdout shows
	}
	// The person reading stderr is not shown zeros for what this backend
	// cannot see; the JSON summary keeps every reason, as its schema says.
	sum.Events = map[event.Reason]uint64{}
	for _, r := range s.Backend.Sees() {
		sum.Events[r] = totals[r]
	}
	stderr := output.NewText(os.Stderr)
	if err := stderr.Summary(sum); err != nil {
		return err
	}
	return stderr.Flush()
}

// summaryOf is what the kernel saw during the run, for the last record.
func summaryOf(s *session.Session) (output.Summary, error) {
	totals, err := s.Totals()
	if err != nil {
		return output.Summary{}, err
	}
	return output.Summary{Time: time.Now(), Backend: string(s.Backend), Events: totals, Visible: s.Backend.Sees(),
		Lost: s.Lost(), Aggregated: s.Aggregated(), Duration: s.Elapsed()}, nil
}

// parseSize reads 4M, 64K, 1G or 262144 (bytes).
func parseSize(arg string) (int64, bool) {
	s, mult := arg, int64(1)
	switch {
	case strings.HasSuffix(s, "K"), strings.HasSuffix(s, "k"):
		mult, s = 1<<10, s[:len(s)-1]
	case strings.HasSuffix(s, "M"), strings.HasSuffix(s, "m"):
		mult, s = 1<<20, s[:len(s)-1]
	case strings.HasSuffix(s, "G"), strings.HasSuffix(s, "g"):
		mult, s = 1<<30, s[:len(s)-1]
	}
	n, err := strconv.ParseInt(s, 10, 32)
	return n * mult, err == nil
}

// parseRingSize reads 4M, 64K, 1G or 262144 and checks what the kernel
// demands of a ring buffer: a power of two, at least one page.
func parseRingSize(arg string) (uint32, error) {
	size, ok := parseSize(arg)
	if !ok || size > 1<<30 || size < int64(os.Getpagesize()) || size&(size-1) != 0 {
		return 0, invalidFlag("ring-size", arg, fmt.Sprintf("a power of two from %dK to 1G", os.Getpagesize()>>10))
	}
	return uint32(size), nil
}

// netnsFlag is --netns, shared by the commands that filter by namespace.
func netnsFlag() cli.Flag {
	return &cli.StringSliceFlag{Name: "netns", Usage: "only the network namespace `NETNS`: an inode number or a path like /run/netns/NAME (repeatable)"}
}

// parseNetnsFlag returns the namespaces --netns names, or nil for all.
func parseNetnsFlag(c *cli.Context) (map[uint32]bool, error) {
	var set map[uint32]bool
	for _, s := range splitList(c.StringSlice("netns")) {
		ino, err := parseNetns(s)
		if err != nil {
			return nil, flagValueError("netns", err)
		}
		if set == nil {
			set = map[uint32]bool{}
		}
		set[ino] = true
	}
	return set, nil
}

// parseNetns accepts an inode number or a path to a namespace file
// (/run/netns/NAME, /proc/PID/ns/net): a path to any other file has an
// inode number too, which would silently match nothing.
func parseNetns(s string) (uint32, error) {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return uint32(n), nil
	}
	var st unix.Stat_t
	if err := unix.Stat(s, &st); err != nil {
		return 0, fmt.Errorf("%s: %w (want an inode number or a path like /run/netns/NAME)", s, err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(s, &fs); err != nil || fs.Type != unix.NSFS_MAGIC {
		return 0, fmt.Errorf("%s is not a namespace file (want an inode number or a path like /run/netns/NAME)", s)
	}
	return uint32(st.Ino), nil
}

func parseCIDRs(flag string, values []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range splitList(values) {
		p, err := event.ParseCIDR(s)
		if err != nil {
			return nil, flagValueError(flag, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// splitList flattens repeated and comma-separated flag values.
func splitList(values []string) []string {
	var out []string
	for _, v := range values {
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
	}
	return out
}

// replayDrops shows a recorded stream as a live run would have shown it:
// the same filters, --count and output. Malformed lines are reported with
// their numbers, skipped, and counted at the end. It needs no privileges.
func replayDrops(o dropsOptions) error {
	in, err := openReplay(o.replay)
	if err != nil {
		return err
	}
	defer in.Close()
	ignoreSIGPIPE()
	w := newWriter(o.format, o.utc, o.events.ecs)
	setHost := func(string) {}
	if jw, ok := w.(*output.JSONWriter); ok {
		setHost = func(h string) { jw.Host = h } // the recording machine's, not this one's
	}
	var shown uint64
	var summary *output.Summary
	malformed, skipped := malformedLines(o.replay)
	err = output.ReadRecords(in, func(r *output.Record) error {
		setHost(r.Host)
		switch {
		case r.Event != nil && o.filter.Match(r.Event):
			if err := w.Event(r.Event); err != nil {
				return err
			}
			if shown++; o.count > 0 && shown >= o.count {
				return session.ErrStop
			}
		case r.Aggregate != nil && o.filter.MatchAggregate(r.Aggregate):
			return w.Aggregate(r.Aggregate)
		case r.Lost != nil:
			return w.Lost(r.Lost.Lost, r.Lost.Total, r.Lost.Time)
		case r.Summary != nil:
			summary = r.Summary
		}
		return nil
	}, skipped)
	if err != nil && !errors.Is(err, session.ErrStop) && !closedPipe(err) {
		return err
	}
	if summary != nil && o.format == "json" {
		if err := w.Summary(*summary); err != nil && !closedPipe(err) {
			return err
		}
	}
	if err := w.Flush(); err != nil && !closedPipe(err) {
		return err
	}
	if summary != nil {
		stderr := output.NewText(os.Stderr)
		stderr.Summary(*summary)
		stderr.Flush()
	}
	malformed()
	return nil
}

// openReplay opens a recorded stream for --replay: PATH, or - for standard
// input.
func openReplay(path string) (io.ReadCloser, error) {
	if path == "-" {
		return io.NopCloser(os.Stdin), nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, flagValueError("replay", err)
	}
	return f, nil
}

// malformedLines reports each malformed line of the replayed file with its
// number as skipped lines come (skipped), and their count at the end
// (report).
func malformedLines(path string) (report func(), skipped func(output.LineError)) {
	n := 0
	report = func() {
		if n > 0 {
			fmt.Fprintf(os.Stderr, "cttrace: %d malformed lines skipped\n", n)
		}
	}
	skipped = func(e output.LineError) {
		n++
		fmt.Fprintf(os.Stderr, "cttrace: %s: %v (skipped)\n", path, e)
	}
	return report, skipped
}
