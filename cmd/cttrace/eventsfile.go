package main

import (
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/cttrace/cttrace/pkg/output"
)

// eventsFileFlags are the flags of the copy of the events that drops and
// serve write for a SIEM shipper (Filebeat, Vector, Fluent Bit).
func eventsFileFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "format", Value: "cttrace", Usage: "`SCHEMA` of JSON records (-o json, --events-file): cttrace (docs/drops.md) or ecs (Elastic Common Schema, docs/ecs.md)"},
		&cli.StringFlag{Name: "events-file", Usage: "write every record, as JSON, to `PATH` too, for a SIEM shipper; SIGHUP reopens it (logrotate)"},
		&cli.StringFlag{Name: "rotate-size", Value: "100M", Usage: "with --events-file: rotate it past `SIZE` (K, M and G suffixes; 0: never)"},
		&cli.IntFlag{Name: "rotate-keep", Value: 5, Usage: "with --events-file: keep `N` rotated files (PATH.1 … PATH.N)"},
	}
}

// streamLimitFlag bounds the events that come one by one; verb says what
// the command does with them.
func streamLimitFlag(verb string) cli.Flag {
	return &cli.UintFlag{Name: "stream-limit", Value: 1000, Usage: verb + " at most `N` events a second one by one; past it, count them per source and " + verb + "\n" +
		"\tone aggregate record a second for the busiest sources and one for the rest (0: every event)"}
}

// eventsFileOptions are the validated eventsFileFlags.
type eventsFileOptions struct {
	path       string
	rotateSize int64
	rotateKeep int
	ecs        bool // --format ecs
}

func parseEventsFileOptions(c *cli.Context) (eventsFileOptions, error) {
	var o eventsFileOptions
	switch f := c.String("format"); f {
	case "cttrace", "ecs":
		o.ecs = f == "ecs"
	default:
		return o, invalidFlag("format", f, "cttrace or ecs")
	}
	if o.path = c.String("events-file"); o.path == "" && (c.IsSet("rotate-size") || c.IsSet("rotate-keep")) {
		return o, usageError(fmt.Errorf("--rotate-size and --rotate-keep go with --events-file"))
	}
	size, ok := parseSize(c.String("rotate-size"))
	if !ok || size < 0 {
		return o, invalidFlag("rotate-size", c.String("rotate-size"), "a size such as 100M (K, M and G suffixes; 0: never)")
	}
	if o.rotateSize, o.rotateKeep = size, c.Int("rotate-keep"); o.rotateKeep < 0 || o.rotateKeep > 1000 {
		return o, invalidFlag("rotate-keep", strconv.Itoa(o.rotateKeep), "0 to 1000")
	}
	return o, nil
}

// open opens the events file, or returns nil when none was asked for.
func (o eventsFileOptions) open() (*output.RotatingFile, error) {
	if o.path == "" {
		return nil, nil
	}
	return output.OpenRotating(o.path, o.rotateSize, o.rotateKeep)
}

// reopenOnHangup reopens the events file on SIGHUP, as logrotate expects,
// until the returned function is called.
func reopenOnHangup(f *output.RotatingFile) func() {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-hup:
				f.Reopen()
			case <-done:
				return
			}
		}
	}()
	return func() { signal.Stop(hup); close(done) }
}

// warnEventsFile says, once at the end, that writes to the events file
// failed: they never stopped the run.
func warnEventsFile(ef *output.Tee) {
	if n, first := ef.Failures(); n > 0 {
		fmt.Fprintf(os.Stderr, "cttrace: warning: %d writes to the events file failed (the first: %v)\n", n, first)
	}
}
