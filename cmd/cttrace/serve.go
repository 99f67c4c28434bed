package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/urfave/cli/v2"

	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/metrics"
	"github.com/cttrace/cttrace/pkg/output"
	"github.com/cttrace/cttrace/pkg/probe"
	"github.com/cttrace/cttrace/pkg/session"
	"github.com/cttrace/cttrace/pkg/top"
	"github.com/cttrace/cttrace/pkg/topk"
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
			"Examples:\n" +
			"   cttrace serve\n" +
			"   cttrace serve --listen 0.0.0.0:9469 --metrics-top 5\n" +
			"   cttrace serve --events-file /var/log/cttrace/events.json --format ecs\n" +
			"   curl -s localhost:9469/metrics | grep cttrace_events_total",
		Flags: slices.Concat(traceFlags(), []cli.Flag{
			&cli.StringFlag{Name: "listen", Value: "127.0.0.1:9469", Usage: "serve on `ADDRESS` (host:port)"},
			&cli.IntFlag{Name: "metrics-top", Value: 10, Usage: "export at most `N` sources a namespace (1 to 100), the rest as source=\"other\""},
			&cli.DurationFlag{Name: "interval", Value: time.Second, Usage: "read the kernel every `DURATION`"},
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
	if topN < 1 || topN > 100 {
		return invalidFlag("metrics-top", fmt.Sprint(topN), "1 to 100")
	}
	if interval < 100*time.Millisecond {
		return invalidFlag("interval", interval.String(), "at least 100ms")
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
	cfg := session.Config{Sources: probe.SourceOptions{Enabled: true}}
	if file != nil {
		defer file.Close()
		cfg.Reasons = event.RefusalsAndEvictions()
		cfg.Stream = probe.StreamOptions{Limit: uint32(min(c.Uint("stream-limit"), 1<<31))}
	}
	debug.SetMemoryLimit(topMemoryLimit)
	ctx, cancel, s, err := startTrace(c.Context, o, cfg)
	if err != nil {
		return err
	}
	defer cancel()
	defer s.Close()

	exp := metrics.New(string(s.Backend), topN)
	var ef *output.EventsFile
	if file != nil {
		ef = output.NewEventsFile(output.Discard, file, events.ecs)
		exp.WatchEventsFile(func() uint64 { n, _ := ef.Failures(); return n })
		defer reopenOnHangup(file)()
		defer warnEventsFile(ef)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(exp)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		// Healthy while readings keep coming: a stuck kernel side shows.
		if !exp.Healthy(time.Now(), healthWindow(interval)) {
			http.Error(w, "no reading of the kernel side for "+healthWindow(interval).String(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	fmt.Fprintf(os.Stderr, "cttrace: serving http://%s/metrics\n", ln.Addr())
	if err := writeReady(o.readyFile, s.Backend); err != nil {
		return err
	}

	err = readAndWrite(ctx, s, exp, interval, ef)
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

// readAndWrite refreshes the exporter until ctx ends and, with an events
// file, copies the events to it meanwhile. Either ending with an error
// ends both: a run that lost the kernel side must not look healthy.
func readAndWrite(ctx context.Context, s *session.Session, exp *metrics.Exporter, interval time.Duration, ef *output.EventsFile) error {
	if ef == nil {
		return readKernel(ctx, s, exp, interval)
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	written := make(chan error, 1)
	go func() {
		err := writeEvents(ctx, s, ef)
		stop()
		written <- err
	}()
	err := readKernel(ctx, s, exp, interval)
	stop()
	err = errors.Join(err, <-written)
	if sum, serr := summaryOf(s); serr == nil {
		ef.FileSummary(sum)
	}
	return err
}

// writeEvents copies every refusal and eviction to the events file, as
// drops --events-file does, until ctx ends; then the ring is drained.
func writeEvents(ctx context.Context, s *session.Session, ef *output.EventsFile) error {
	return s.Run(ctx, session.Handler{
		Event: ef.Event,
		Idle:  ef.Flush,
		Aggregate: func(batch []event.Aggregate) error {
			for i := range batch {
				ef.Aggregate(&batch[i])
			}
			return ef.Flush()
		},
		Tick: func(lost uint64) error {
			if lost == 0 {
				return nil
			}
			ef.Lost(lost, s.Lost(), time.Now())
			return ef.Flush()
		},
	})
}

// healthWindow is how long /healthz waits for the next reading: three
// intervals, and never under 10 s, because one reading after a spoofed flood
// ranks up to 65,536 sources and can take seconds on a loaded host (a 1.6 s
// window failed CI under the race detector). Kubernetes' liveness probe
// defaults (every 10 s, 3 failures) tolerate far more.
func healthWindow(interval time.Duration) time.Duration {
	return max(3*interval, 10*time.Second)
}

// readKernel refreshes the exporter every interval until ctx ends. A failed
// read is counted and logged, and the next one tried: a scrape shows it.
func readKernel(ctx context.Context, s *session.Session, exp *metrics.Exporter, interval time.Duration) error {
	warn := func(what string, err error) {
		exp.Failed(what)
		fmt.Fprintf(os.Stderr, "cttrace: warning: %s: %v\n", what, err)
	}
	o := top.Options{Sort: top.SortDrops, Limit: top.HistoryCapacity, Capacity: 65536}
	sv, err := newSourceView(s, o, topk.Grouping{V4Bits: 32, V6Bits: 128}, interval, warn)
	if err != nil {
		return err
	}
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	adjust := time.NewTicker(100 * time.Millisecond)
	defer adjust.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-adjust.C:
			if err := sv.sampler.Adjust(now); err != nil {
				warn("sampling", err)
			}
		case now := <-ticker.C:
			r, err := reading(now, sv)
			if errors.Is(err, probe.ErrConntrackGone) {
				return err
			}
			if err != nil {
				warn("sources", err)
				continue
			}
			exp.Update(r)
		}
	}
}

func reading(now time.Time, sv *sourceView) (*metrics.Reading, error) {
	snap, err := sv.snapshot(now)
	if err != nil {
		return nil, err
	}
	r := &metrics.Reading{Time: now, Snapshot: &snap, Tables: sv.tables.Stats(), Lost: snap.Lost}
	if r.Events, err = sv.s.NamespaceTotals(); err != nil {
		return nil, err
	}
	if r.Details, err = sv.s.NamespaceDetails(); err != nil {
		return nil, err
	}
	if b, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_buckets"); err == nil {
		fmt.Sscan(string(b), &r.Buckets)
	}
	return r, nil
}
