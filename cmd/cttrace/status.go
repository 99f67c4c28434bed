package main

import (
	"fmt"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/cttrace/cttrace/pkg/output"
	"github.com/cttrace/cttrace/pkg/probe"
	"github.com/cttrace/cttrace/pkg/status"
	"github.com/cttrace/cttrace/pkg/top"
)

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show every namespace's conntrack table, its counters, what it costs in memory, and advice",
		Description: "Read-only and fast: attaches no probes. Per network namespace with conntrack\n" +
			"in use: entries, max, fill and the kernel's counters (as conntrack -S shows\n" +
			"them, read over ctnetlink). Memory is priced with the running kernel's entry\n" +
			"size (its slab cache) and hash table; --what-if-max prices another size. Advice\n" +
			"names the figure it rests on, and is printed, never applied.\n\n" +
			"Examples:\n" +
			"   cttrace status\n" +
			"   cttrace status --what-if-max 1048576\n" +
			"   cttrace status --watch                 then live rates and top sources until Ctrl-C\n" +
			"   cttrace status -o json | jq '.namespaces[] | {netns, fill}'",
		Flags: []cli.Flag{
			outputFlag(),
			&cli.Int64Flag{Name: "what-if-max", Usage: "price a table of `N` entries a namespace"},
			&cli.Int64Flag{Name: "what-if-buckets", Usage: "with --what-if-max: `N` hash buckets (default: as many as the max, the kernel's own ratio)"},
			&cli.BoolFlag{Name: "watch", Usage: "then attach the probes and show, live, the drop and eviction rates and the top sources (as top-sources does)"},
			&cli.DurationFlag{Name: "interval", Value: time.Second, Usage: "with --watch: refresh every `DURATION`"},
			&cli.DurationFlag{Name: "duration", Usage: "with --watch: exit after `DURATION` (0: until Ctrl-C)"},
		},
		Action: runStatus,
	}
}

func runStatus(c *cli.Context) error {
	format, err := outputFormat(c)
	if err != nil {
		return err
	}
	opts := status.Options{WhatIfMax: c.Int64("what-if-max"), WhatIfBuckets: c.Int64("what-if-buckets")}
	if opts.WhatIfMax < 0 || opts.WhatIfMax > 1<<31-1 {
		return invalidFlag("what-if-max", fmt.Sprint(opts.WhatIfMax), "a number of entries from 1 to 2147483647")
	}
	if opts.WhatIfBuckets < 0 || opts.WhatIfBuckets > 1<<31-1 {
		return invalidFlag("what-if-buckets", fmt.Sprint(opts.WhatIfBuckets), "a number of buckets from 1 to 2147483647")
	}
	if opts.WhatIfBuckets > 0 && opts.WhatIfMax == 0 {
		return usageError(fmt.Errorf("--what-if-buckets goes with --what-if-max"))
	}
	watch, interval, duration := c.Bool("watch"), c.Duration("interval"), c.Duration("duration")
	if !watch && (c.IsSet("interval") || c.IsSet("duration")) {
		return usageError(fmt.Errorf("--interval and --duration go with --watch"))
	}
	if interval < 10*time.Millisecond {
		return invalidFlag("interval", interval.String(), "at least 10ms")
	}
	if duration < 0 {
		return invalidFlag("duration", duration.String(), "0 or more")
	}
	r, err := status.Gather(opts)
	if err != nil {
		return err
	}
	w := output.NewStatus(c.App.Writer, format)
	if err := w.Write(r); err != nil {
		return err
	}
	if err := w.Flush(); err != nil || !watch {
		return err
	}
	// The live part is top-sources itself, with its defaults.
	o := topOptions{trace: traceOptions{backend: probe.BackendAuto, duration: duration}, format: format, view: top.DefaultOptions()}
	o.view.Interval = interval
	return watchTop(c.Context, o)
}
