package output

import (
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/cttrace/cttrace/pkg/probe"
)

// NewFeatures writes `cttrace features`' report: each trial and the
// kernel's answer, and the backend an automatic choice would take, as a
// table or as one indented JSON document.
func NewFeatures(w io.Writer, f Format) Writer[*probe.Report] {
	d := newDocument(w, f, writeFeaturesText, func(r *probe.Report) any { return r })
	d.indent = true
	return d
}

func writeFeaturesText(w io.Writer, r *probe.Report) error {
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
