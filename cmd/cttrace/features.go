package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/urfave/cli/v2"

	"github.com/cttrace/cttrace/pkg/probe"
	"github.com/cttrace/cttrace/pkg/session"
)

func featuresCommand() *cli.Command {
	return &cli.Command{
		Name:  "features",
		Usage: "show which BPF attach methods this kernel allows, and the backend cttrace would use",
		Description: "Each feature is decided by loading and attaching a trivial program, not by\n" +
			"the kernel version; a feature that fails shows the kernel's answer.",
		Flags: []cli.Flag{outputFlag()},
		Action: func(c *cli.Context) error {
			format, err := outputFormat(c)
			if err != nil {
				return err
			}
			f, err := probe.DetectFeatures()
			if err != nil {
				return fmt.Errorf("detect features: %w", err)
			}
			report := newFeatureReport(f)
			// The report is still worth reading without conntrack, but
			// the verdict is the tracing commands': nothing to trace.
			noConntrack := session.RequireConntrack()
			if noConntrack != nil {
				report.Backend, report.BackendReason = "none", noConntrack.Error()
			}
			if format == "json" {
				err = writeJSON(c.App.Writer, report)
			} else {
				err = report.writeText(c.App.Writer)
			}
			if err != nil {
				return err
			}
			return noConntrack
		},
	}
}

// featureReport is `cttrace features`'s output, in both formats.
type featureReport struct {
	*probe.Features
	Backend       string `json:"backend"`
	BackendReason string `json:"backend_reason"`
}

func newFeatureReport(f *probe.Features) featureReport {
	r := featureReport{Features: f}
	b, why, err := f.ChooseBackend(probe.BackendAuto)
	if err != nil {
		r.Backend, r.BackendReason = "none", err.Error()
	} else {
		r.Backend, r.BackendReason = string(b), why
	}
	return r
}

func (r featureReport) writeText(w io.Writer) error {
	fmt.Fprintf(w, "kernel: %s\n", r.Kernel)
	if r.Preemption != "" {
		fmt.Fprintf(w, "preemption: %s (%s)\n", r.Preemption, r.PreemptionSource)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FEATURE\tUSABLE\tTARGET\tKERNEL SAID")
	for _, x := range r.List {
		usable := "no"
		if x.Usable {
			usable = "yes"
		}
		said := x.Error
		if said == "" {
			said = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", x.Name, usable, x.Detail, said)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "\nbackend (auto): %s\n  why: %s\n", r.Backend, r.BackendReason)
	return err
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
