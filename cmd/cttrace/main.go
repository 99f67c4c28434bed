// Command cttrace shows, while it happens, when and why the Linux
// connection-tracking table refuses packets, and which sources cause it.
package main

import (
	"os"

	"github.com/urfave/cli/v2"
)

func main() {
	os.Exit(run(newApp(), os.Args))
}

func newApp() *cli.App {
	app := &cli.App{
		Name:  "cttrace",
		Usage: "trace why the conntrack table drops packets, and who causes it",
		Description: "cttrace attaches BPF programs to the kernel's connection-tracking paths\n" +
			"and reports table-full drops, evictions and insert failures as they happen.\n" +
			"It needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN, and kernel BTF.\n\n" +
			"Examples:\n" +
			"   cttrace demo                         a small attack, watched, in a throwaway namespace\n" +
			"   cttrace features                     what this kernel allows\n" +
			"   cttrace drops --duration 60s         every drop for a minute\n" +
			"   cttrace top-sources                  who is refused, who fills the table\n" +
			"   cttrace help drops                   a command's flags and examples",
		Version: version(),
		Commands: []*cli.Command{
			demoCommand(),
			dropsCommand(),
			topCommand(),
			statusCommand(),
			serveCommand(),
			featuresCommand(),
			completionCommand(),
			manCommand(),
			helpCommand(),
		},
	}
	applyConventions(app)
	return app
}
