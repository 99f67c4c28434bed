// Command benchcmp compares two `make bench` results folders: for each
// tracer both ran, a markdown table of flood-rate ratio, BPF time, tracer
// CPU, peak RSS and capture, "before → after", at the floods at the maximum
// rate (or those named with -point).
//
//	go run ./bench/cmd/benchcmp build/bench/BEFORE build/bench/AFTER
//	make bench-compare BEFORE=build/bench/BEFORE AFTER=build/bench/AFTER
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cttrace/cttrace/bench"
)

func main() {
	points := flag.String("point", "", "flood labels separated by semicolons (default: every flood at the maximum rate both runs have), e.g. 'max, 1k sources'")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: benchcmp [-point LABELS] BEFORE AFTER   (results folders or samples.json files)")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 2 {
		flag.Usage()
		os.Exit(2)
	}
	before, err := bench.LoadSamples(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchcmp:", err)
		os.Exit(1)
	}
	after, err := bench.LoadSamples(flag.Arg(1))
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchcmp:", err)
		os.Exit(1)
	}
	var labels []string
	if *points != "" {
		for _, l := range strings.Split(*points, ";") {
			labels = append(labels, strings.TrimSpace(l))
		}
	}
	for i, name := range []string{"before", "after"} {
		fmt.Printf("%s: %s", name, flag.Arg(i))
		if b, err := os.ReadFile(filepath.Join(flag.Arg(i), "results.md")); err == nil {
			first, _, _ := strings.Cut(string(b), "\n")
			fmt.Printf(": %s", first)
		}
		fmt.Println()
		fmt.Println()
	}
	bench.Compare(os.Stdout, before, after, labels)
}
