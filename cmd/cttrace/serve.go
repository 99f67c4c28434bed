package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"slices"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/metrics"
	"github.com/cttrace/cttrace/pkg/output"
	"github.com/cttrace/cttrace/pkg/probe"
	"github.com/cttrace/cttrace/pkg/session"
	"github.com/cttrace/cttrace/pkg/stream"
)

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "serve the probes' counts, the tables and the top sources as Prometheus metrics",
		Description: "Attaches the probes and serves /metrics (Prometheus text format) and /healthz on\n" +
			"--listen, loopback unless told otherwise. Metrics are named cttrace_* and sit\n" +
			"beside node_exporter's node_nf_conntrack_* (docs/serve.md lists them, and the\n" +
			"bound on their number whatever an attacker does). With --events-file, every\n" +
			"refusal and eviction also goes there as NDJSON (cttrace's schema or ECS), as\n" +
			"drops --events-file writes it. SIGTERM and Ctrl-C stop it.\n\n" +
			"It attaches the hooks every new flow passes only when a table reaches\n" +
			"--pressure-fill or refuses a flow, so that a healthy host runs none of its\n" +
			"programs (docs/backends.md, Per-flow hooks); --hooks always keeps them on.\n\n" +
			"Examples:\n" +
			"   cttrace serve\n" +
			"   cttrace serve --listen 0.0.0.0:9469 --metrics-top 5\n" +
			"   cttrace serve --netns /run/netns/edge\n" +
			"   cttrace serve --events-file /var/log/cttrace/events.json --format ecs\n" +
			"   curl -s localhost:9469/metrics | grep cttrace_events_total",
		Flags: slices.Concat(traceFlags("on-pressure"), []cli.Flag{
			&cli.StringFlag{Name: "listen", Value: "127.0.0.1:9469", Usage: "serve on `ADDRESS` (host:port)"},
			&cli.IntFlag{Name: "metrics-top", Value: 10, Usage: "export at most `N` sources a namespace (0 to 100), the rest as source=\"other\"; 0: no source series, and the kernel counts per namespace only"},
			&cli.DurationFlag{Name: "interval", Value: time.Second, Usage: "read the kernel every `DURATION`"},
			netnsFlag(),
			streamLimitFlag("write"),
		}, eventsFileFlags()),
		Action: runServe,
	}
}

func runServe(c *cli.Context) error {
	o, err := parseTraceOptions(c)
	if err != nil {
		return err
	}
	topN, interval := c.Int("metrics-top"), c.Duration("interval")
	if topN < 0 || topN > 100 {
		return invalidFlag("metrics-top", fmt.Sprint(topN), "0 to 100")
	}
	if interval < 100*time.Millisecond {
		return invalidFlag("interval", interval.String(), "at least 100ms")
	}
	netns, err := parseNetnsFlag(c)
	if err != nil {
		return err
	}
	events, err := parseEventsFileOptions(c)
	if err != nil {
		return err
	}
	if events.path == "" && c.IsSet("stream-limit") {
		return usageError(fmt.Errorf("--stream-limit goes with --events-file"))
	}
	ln, err := net.Listen("tcp", c.String("listen"))
	var addrErr *net.AddrError
	switch {
	case errors.As(err, &addrErr):
		return flagValueError("listen", err) // not an address: the command line's fault
	case err != nil:
		return fmt.Errorf("serve: %w", err) // in use, or not this host's: the system's answer
	}
	defer ln.Close()
	file, err := events.open()
	if err != nil {
		return err
	}
	cfg := session.Config{Sources: probe.SourceOptions{Enabled: true, NamespacesOnly: topN == 0, ReadEvery: interval}}
	if file != nil {
		defer file.Close()
		cfg.Reasons = event.RefusalsAndEvictions()
		cfg.Stream = probe.StreamOptions{Limit: uint32(min(c.Uint("stream-limit"), 1<<31)), Netns: slices.Collect(maps.Keys(netns))}
	}
	debug.SetMemoryLimit(serveMemoryLimit)
	ctx, cancel, s, err := startTrace(c.Context, o, cfg)
	if err != nil {
		return err
	}
	defer cancel()
	defer s.Close()

	exp := metrics.New(s.Backend(), topN, netns)
	var tee *output.Tee
	if file != nil {
		tee = output.NewTee(output.Discard, file, events.ecs)
		exp.WatchEventsFile(func() uint64 { n, _ := tee.Failures(); return n })
		defer reopenOnHangup(file)()
		defer warnEventsFile(tee)
	}
	srv := &http.Server{Handler: exp.Handler(interval), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	fmt.Fprintf(os.Stderr, "cttrace: serving http://%s/metrics\n", ln.Addr())
	if err := writeReady(o.readyFile, s.Backend()); err != nil {
		return err
	}

	err = followAndWrite(ctx, s, exp, interval, tee)
	shutdown, stop := context.WithTimeout(context.Background(), 5*time.Second)
	defer stop()
	if serr := srv.Shutdown(shutdown); serr != nil {
		err = errors.Join(err, fmt.Errorf("stop serving: %w", serr))
	}
	if serr := <-served; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, fmt.Errorf("serve: %w", serr))
	}
	return err
}

// followAndWrite refreshes the exporter until ctx ends and, with an events
// file, copies the records to it meanwhile. Either ending with an error
// ends both: a run that lost the kernel side must not look healthy.
func followAndWrite(ctx context.Context, s *session.Session, exp *metrics.Exporter, interval time.Duration, tee *output.Tee) error {
	warn := func(what string, err error) { fmt.Fprintf(os.Stderr, "cttrace: warning: %s: %v\n", what, err) }
	if tee == nil {
		return exp.Follow(ctx, s, interval, warn)
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	written := make(chan error, 1)
	go func() {
		err := stream.Run(ctx, s, tee, stream.Options{})
		stop()
		written <- err
	}()
	err := exp.Follow(ctx, s, interval, warn)
	stop()
	return errors.Join(err, <-written)
}

// serveMemoryLimit is serve's Go soft memory limit (topMemoryLimit says
// why one): serve runs on every node all day, and ranks only the few
// sources a namespace it exports, so it lives on less than top-sources.
// Through a million spoofed sources its live heap peaks near 10 MiB; with
// this limit its resident memory peaked at 27 to 29 MiB (35 with 40
// MiB), the collector running about four times a second at most, and a
// limit of 16 MiB would leave a busier node's live heap too little room.
const serveMemoryLimit = 18 << 20
