package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/cttrace/cttrace/pkg/host"
	"github.com/cttrace/cttrace/pkg/output"
	"github.com/cttrace/cttrace/pkg/probe"
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
			report := f.Report()
			w := output.NewFeatures(c.App.Writer, format)
			if err := w.Write(&report); err != nil {
				return err
			}
			if err := w.Flush(); err != nil {
				return err
			}
			// The report is worth reading without conntrack, but there is
			// nothing to trace: the status says so.
			return host.RequireConntrack()
		},
	}
}
