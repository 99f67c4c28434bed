package main

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/urfave/cli/v2"
	"github.com/xrash/smetrics"
)

// The command-line conventions every command follows, in one place: exit
// statuses, how mistakes are reported, help, suggestions and --version.

// Exit statuses, as documented in the README.
const (
	exitRuntime = 1 // the kernel or the system refused something
	exitUsage   = 2 // the command line is wrong
)

// usageErr marks an error as the command line's fault (exit status 2); cmd
// is the command whose help the hint points to ("" for cttrace's own),
// filled in by the command's conventions unless root says it is cttrace's.
type usageErr struct {
	cmd  string
	root bool
	err  error
}

func (e *usageErr) Error() string { return e.err.Error() }
func (e *usageErr) Unwrap() error { return e.err }

func usageError(err error) error { return &usageErr{err: err} }

// invalidFlag is the usage error for a flag's value: what was given and
// what the flag wants, in the words of flagError's messages.
func invalidFlag(name, value, want string) error {
	return usageError(fmt.Errorf("invalid %s %q: want %s", dashed(name), value, want))
}

// flagValueError is the usage error for a value that a parser refused with
// its own explanation.
func flagValueError(name string, err error) error {
	return usageError(fmt.Errorf("%s: %w", dashed(name), err))
}

// run runs the app and maps errors to exit statuses. Errors go to stderr
// only, one line (and, for a usage error, a hint): stdout may be a JSON
// pipe, and a screen of help there would be read as data.
func run(app *cli.App, args []string) int {
	err := app.Run(args)
	if err == nil {
		return 0
	}
	fmt.Fprintf(app.ErrWriter, "cttrace: %v\n", err)
	var ue *usageErr
	if errors.As(err, &ue) {
		fmt.Fprintf(app.ErrWriter, "Run '%s --help' for usage.\n", strings.TrimSpace("cttrace "+ue.cmd))
		return exitUsage
	}
	return exitRuntime
}

// applyConventions makes every command of app report mistakes the same way
// and refuse arguments it does not take.
func applyConventions(app *cli.App) {
	app.Writer, app.ErrWriter = os.Stdout, os.Stderr
	app.EnableBashCompletion = true // the completion scripts ask cttrace itself
	app.HideHelpCommand = true      // our own help command is listed instead
	// which also stops urfave/cli from adding --help to cttrace's own flags.
	app.Flags = append(app.Flags, cli.HelpFlag)
	// Statuses are run's to decide: urfave/cli would exit from inside Run.
	app.ExitErrHandler = func(*cli.Context, error) {}
	app.OnUsageError = func(_ *cli.Context, err error, _ bool) error {
		return &usageErr{err: flagError(err, app.Flags)}
	}
	app.Action = func(c *cli.Context) error {
		if c.NArg() > 0 {
			return &usageErr{err: unknownCommand(c.App, c.Args().First())}
		}
		return cli.ShowAppHelp(c)
	}
	cli.VersionPrinter = printVersion
	for _, cmd := range app.Commands {
		conventionsFor(cmd)
	}
}

func conventionsFor(cmd *cli.Command) {
	name, flags, action := cmd.Name, cmd.Flags, cmd.Action
	cmd.HideHelpCommand = true // `cttrace drops help` is an unexpected argument, not a topic
	cmd.OnUsageError = func(_ *cli.Context, err error, _ bool) error {
		return &usageErr{cmd: name, err: flagError(err, flags)}
	}
	cmd.Action = func(c *cli.Context) error {
		if cmd.ArgsUsage == "" && c.NArg() > 0 {
			return &usageErr{cmd: name, err: fmt.Errorf("unexpected argument %q", c.Args().First())}
		}
		err := action(c)
		var ue *usageErr
		if errors.As(err, &ue) && ue.cmd == "" && !ue.root {
			ue.cmd = name
		}
		return err
	}
}

// The flag package's own words for a value it could not parse or a flag
// it does not know.
var (
	flagValueErr = regexp.MustCompile(`^invalid (?:boolean )?value "(.*)" for (?:flag )?-([^:]+): `)
	flagMissing  = regexp.MustCompile(`^flag needs an argument: -+(.+)$`)
)

const flagUnknown = "flag provided but not defined: -"

// flagError rewrites the flag package's messages for an operator: the flag
// as they would type it, and what it wants.
func flagError(err error, flags []cli.Flag) error {
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, flagUnknown); ok {
		name = strings.TrimLeft(name, "-")
		if s := closest(name, flagNames(flags)); s != "" {
			return fmt.Errorf("unknown flag %s (did you mean %s?)", dashed(name), dashed(s))
		}
		return fmt.Errorf("unknown flag %s", dashed(name))
	}
	if m := flagMissing.FindStringSubmatch(msg); m != nil {
		return fmt.Errorf("%s needs a value", dashed(m[1]))
	}
	if m := flagValueErr.FindStringSubmatch(msg); m != nil {
		if want := wants(lookupFlag(flags, m[2])); want != "" {
			return fmt.Errorf("invalid %s %q: want %s", dashed(m[2]), m[1], want)
		}
	}
	return err
}

// wants says what a flag of f's kind takes.
func wants(f cli.Flag) string {
	switch f.(type) {
	case *cli.DurationFlag:
		return "a duration such as 500ms, 30s or 5m"
	case *cli.IntFlag, *cli.Int64Flag:
		return "a whole number"
	case *cli.UintFlag, *cli.Uint64Flag:
		return "a whole number, 0 or more"
	case *cli.BoolFlag:
		return "true or false"
	}
	return ""
}

func lookupFlag(flags []cli.Flag, name string) cli.Flag {
	for _, f := range flags {
		for _, n := range f.Names() {
			if n == name {
				return f
			}
		}
	}
	return nil
}

func flagNames(flags []cli.Flag) []string {
	var names []string
	for _, f := range flags {
		names = append(names, f.Names()...)
	}
	return append(names, "help")
}

// dashed writes a flag name as it is typed: -o, --output.
func dashed(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// closest returns the candidate nearest to s, if it is near enough to be
// what was meant (Jaro-Winkler, the measure urfave/cli suggests with, but
// with a floor: "bogus" should not suggest "backend").
func closest(s string, candidates []string) string {
	best, score := "", 0.0
	for _, c := range candidates {
		if d := smetrics.JaroWinkler(s, c, 0.7, 4); d > score {
			best, score = c, d
		}
	}
	if score < 0.85 {
		return ""
	}
	return best
}

func unknownCommand(app *cli.App, name string) error {
	var names []string
	for _, c := range app.Commands {
		if !c.Hidden {
			names = append(names, c.Names()...)
		}
	}
	if s := closest(name, names); s != "" {
		return fmt.Errorf("unknown command %q (did you mean %s?)", name, s)
	}
	return fmt.Errorf("unknown command %q", name)
}

// helpCommand is `cttrace help [COMMAND]`, with urfave/cli's help output
// but this file's way of reporting an unknown command.
func helpCommand() *cli.Command {
	return &cli.Command{
		Name:      "help",
		Usage:     "show the help of cttrace or of one command",
		ArgsUsage: "[COMMAND]",
		Action: func(c *cli.Context) error {
			root := c.Lineage()[1]
			switch c.NArg() {
			case 0:
				return cli.ShowAppHelp(root)
			case 1:
				name := c.Args().First()
				if cmd := c.App.Command(name); cmd == nil || cmd.Hidden {
					return &usageErr{root: true, err: unknownCommand(c.App, name)}
				}
				return cli.ShowCommandHelp(root, name)
			}
			return &usageErr{cmd: "help", err: fmt.Errorf("unexpected argument %q (help takes one command)", c.Args().Get(1))}
		},
	}
}

// suggestValue is what a flag with a fixed set of values wants: the value
// nearest to s if it is near, and the set.
func suggestValue(s, set string) string {
	if c := closest(s, strings.Split(set, ", ")); c != "" {
		return fmt.Sprintf("%s (did you mean %s?)", set, c)
	}
	return set
}
