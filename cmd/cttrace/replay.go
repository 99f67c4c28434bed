package main

import (
	"fmt"
	"io"
	"iter"
	"os"

	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/output"
)

// replay hands the recording at path (cttrace's JSON, as drops -o json or
// --events-file wrote it; - for standard input) to show, record by record.
// Malformed lines are reported with their numbers as they come, skipped,
// and counted at the end. It needs no privileges.
func replay(path string, show func(iter.Seq2[*event.Record, error]) error) error {
	in, err := openReplay(path)
	if err != nil {
		return err
	}
	defer in.Close()
	ignoreSIGPIPE()
	report, skipped := malformedLines(path)
	defer report()
	if err := show(output.ReadRecords(in, skipped)); !closedPipe(err) {
		return err
	}
	return nil
}

// openReplay opens a recorded stream for --replay: PATH, or - for standard
// input.
func openReplay(path string) (io.ReadCloser, error) {
	if path == "-" {
		return io.NopCloser(os.Stdin), nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, flagValueError("replay", err)
	}
	return f, nil
}

// malformedLines reports each malformed line of the replayed file with its
// number as skipped lines come (skipped), and their count at the end
// (report).
func malformedLines(path string) (report func(), skipped func(output.LineError)) {
	n := 0
	report = func() {
		if n > 0 {
			fmt.Fprintf(os.Stderr, "cttrace: %d malformed lines skipped\n", n)
		}
	}
	skipped = func(e output.LineError) {
		n++
		fmt.Fprintf(os.Stderr, "cttrace: %s: %v (skipped)\n", path, e)
	}
	return report, skipped
}
