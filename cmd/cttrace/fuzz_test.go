package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// The parsers of flag values cttrace writes itself, and the rewriting of
// the flag package's messages: an error or a value, never a panic, and
// never an empty message.
func FuzzFlagValues(f *testing.F) {
	for _, s := range []string{"4M", "64K", "1G", "2G", "4096", "5000", "", "M", "-1K", "18446744073709551615", "/24", "/33", "24", "/", "/-1", "/0x10"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if n, err := parseRingSize(s); err == nil && (n < 4096 || n&(n-1) != 0) {
			t.Fatalf("ring size %q accepted as %d", s, n)
		}
		if n, err := parsePrefixLen("group-v4", s, 32); err == nil && (n < 1 || n > 32) {
			t.Fatalf("prefix %q accepted as /%d", s, n)
		}
	})
}

func FuzzFlagErrors(f *testing.F) {
	for _, s := range []string{
		"flag provided but not defined: -bogus", "flag provided but not defined: -", "flag provided but not defined: --",
		`invalid value "5" for flag -duration: parse error`, `invalid value "" for flag -: x`, `invalid boolean value "x" for -utc: parse error`,
		"flag needs an argument: -o", "flag needs an argument: -", "something else",
	} {
		f.Add(s)
	}
	flags := dropsCommand().Flags
	f.Fuzz(func(t *testing.T, msg string) {
		err := flagError(errors.New(msg), flags)
		if err == nil || strings.TrimSpace(err.Error()) == "" && strings.TrimSpace(msg) != "" {
			t.Fatalf("%q rewritten as %v", msg, err)
		}
		_ = unknownCommand(&cli.App{Commands: newApp().Commands}, msg)
	})
}
