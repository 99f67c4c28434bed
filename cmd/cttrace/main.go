// Command cttrace shows, while it happens, when and why the Linux
// connection-tracking table refuses packets, and which sources cause it.
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v2"
)

// Exit statuses, as documented in the README.
const (
	exitRuntime = 1 // the kernel or the system refused something
	exitUsage   = 2 // the command line is wrong
)

func main() {
	os.Exit(run(newApp(), os.Args))
}

func newApp() *cli.App {
	return &cli.App{
		Name:  "cttrace",
		Usage: "trace why the conntrack table drops packets, and who causes it",
		Description: "cttrace attaches BPF programs to the kernel's connection-tracking paths\n" +
			"and reports table-full drops, evictions and insert failures as they happen.\n" +
			"It needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN, and kernel BTF.",
		Commands: []*cli.Command{
			dropsCommand(),
			topCommand(),
			featuresCommand(),
		},
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return usageError(err)
		},
		CommandNotFound: func(c *cli.Context, name string) {
			fmt.Fprintf(c.App.ErrWriter, "cttrace: unknown command %q; see cttrace --help\n", name)
			os.Exit(exitUsage)
		},
		HideHelpCommand: true,
	}
}

// run maps errors to exit statuses: usage errors to 2, everything else to 1.
func run(app *cli.App, args []string) int {
	err := app.Run(args)
	if err == nil {
		return 0
	}
	fmt.Fprintf(os.Stderr, "cttrace: %v\n", err)
	var ue *usageErr
	if errors.As(err, &ue) || strings.Contains(err.Error(), "flag provided but not defined") {
		return exitUsage
	}
	return exitRuntime
}

// usageErr marks an error as the command line's fault (exit status 2).
type usageErr struct{ err error }

func (e *usageErr) Error() string { return e.err.Error() }
func (e *usageErr) Unwrap() error { return e.err }

func usageError(err error) error { return &usageErr{err} }

// outputFlag is shared by every command that prints results.
func outputFlag() *cli.StringFlag {
	return &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "text", Usage: "output format: text or json"}
}

func outputFormat(c *cli.Context) (string, error) {
	switch o := c.String("output"); o {
	case "text", "json":
		return o, nil
	default:
		return "", usageError(fmt.Errorf("invalid --output %q (want text or json)", o))
	}
}
