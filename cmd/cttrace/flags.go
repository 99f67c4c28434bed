package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
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

// The flags several commands share, their parsing, and how a command that
// traces starts its session.

// traceFlags are the flags of every command that attaches probes; hooks is
// the default of --hooks: always for the commands run during an incident
// (drops, top-sources), on-pressure for serve, which runs all day.
func traceFlags(hooks string) []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "backend", Value: "auto", Usage: "use `BACKEND`: auto, fentry, kprobe or tracepoint (see cttrace features)"},
		&cli.DurationFlag{Name: "duration", Usage: "exit after `DURATION` (for example 30s; 0: until Ctrl-C)"},
		&cli.StringFlag{Name: "ready-file", Usage: "write `PATH` once the probes are attached (for scripts)"},
		&cli.StringFlag{Name: "hooks", Value: hooks, Usage: "attach the per-flow hooks in `MODE`: always, or on-pressure " +
			"(from --pressure-fill, the first refusal or insert failure, until --pressure-quiet; healthy tables then run no program, " +
			"and refusals are counted exactly but without their sources)"},
		&cli.Float64Flag{Name: "pressure-fill", Value: session.DefaultFillHigh * 100, Usage: "with --hooks on-pressure, attach the per-flow hooks " +
			"when a table reaches `PERCENT` of nf_conntrack_max (more than 100: only at the first refusal or insert failure)"},
		&cli.DurationFlag{Name: "pressure-quiet", Value: session.DefaultQuietPeriod, Usage: "with --hooks on-pressure, detach the per-flow hooks " +
			"after `DURATION` without a refusal, every table 10 points below --pressure-fill"},
	}
}

// traceOptions are the validated traceFlags.
type traceOptions struct {
	backend   probe.Backend
	duration  time.Duration
	readyFile string
	ringBytes uint32
	// onPressure, fill and quiet are --hooks on-pressure, --pressure-fill
	// (a fraction) and --pressure-quiet.
	onPressure bool
	fill       float64
	quiet      time.Duration
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
	switch c.String("hooks") {
	case "always":
	case "on-pressure":
		o.onPressure = true
	default:
		return o, invalidFlag("hooks", c.String("hooks"), "always or on-pressure")
	}
	if o.fill = c.Float64("pressure-fill") / 100; !(o.fill > 0) {
		return o, invalidFlag("pressure-fill", fmt.Sprint(c.Float64("pressure-fill")), "a percentage above 0")
	}
	if o.quiet = c.Duration("pressure-quiet"); o.quiet <= 0 {
		return o, invalidFlag("pressure-quiet", o.quiet.String(), "more than 0")
	}
	if o.readyFile = c.String("ready-file"); o.readyFile != "" {
		// Found out now, not after the probes are attached.
		if _, err := os.Stat(filepath.Dir(o.readyFile)); err != nil {
			return o, flagValueError("ready-file", err)
		}
	}
	return o, nil
}

// startTrace attaches the probes as cfg and the trace flags say, and
// returns the context the run lasts for: until Ctrl-C or SIGTERM, or for
// --duration counted from the moment the probes are attached (loading
// takes seconds on a slow machine, and that time is not traced). SIGPIPE
// is turned into EPIPE errors, so that `cttrace drops | head` ends cleanly.
// The caller writes --ready-file (writeReady) once what it shows is set up.
func startTrace(parent context.Context, o traceOptions, cfg session.Config) (context.Context, context.CancelFunc, *session.Session, error) {
	ignoreSIGPIPE()
	ctx, stop := signalContext(parent)
	// Once stopping, a second Ctrl-C kills at once, as with any tool.
	context.AfterFunc(ctx, stop)
	cfg.Backend, cfg.RingBytes, cfg.Log = o.backend, o.ringBytes, os.Stderr
	cfg.PerFlowOnPressure, cfg.FillHigh, cfg.QuietPeriod = o.onPressure, o.fill, o.quiet
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
// now on will be seen, and counted from what the tables held then.
func writeReady(path string, backend string) error {
	if path == "" {
		return nil
	}
	if err := os.WriteFile(path, []byte(backend+"\n"), 0o644); err != nil {
		return fmt.Errorf("write ready file: %w", err)
	}
	return nil
}

// outputFlag is shared by every command that prints results.
func outputFlag() *cli.StringFlag {
	return &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "text", Usage: "output `FORMAT`: text or json"}
}

func outputFormat(c *cli.Context) (output.Format, error) {
	f, err := output.ParseFormat(c.String("output"))
	if err != nil {
		return "", invalidFlag("output", c.String("output"), "text or json")
	}
	return f, nil
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
	return parseSet("netns", c.StringSlice("netns"), parseNetns)
}

// parseSet reads a repeatable, comma-separated flag into a set, each value
// by parse; nil when the flag is not given (everything is selected).
func parseSet[T comparable](flag string, values []string, parse func(string) (T, error)) (map[T]bool, error) {
	var set map[T]bool
	for _, s := range splitList(values) {
		v, err := parse(s)
		if err != nil {
			return nil, flagValueError(flag, err)
		}
		if set == nil {
			set = map[T]bool{}
		}
		set[v] = true
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
