// Package output is where the path of one event ends: it writes every view
// cttrace shows, each as text for people or as JSON for programs, through
// one shape. New<View>(w, format, ...) returns a Writer of that view's
// values:
//
//   - NewStream: the stream of records (`cttrace drops`, the events file):
//     aligned text lines, NDJSON in cttrace's schema (docs/drops.md; the
//     reader in read.go decodes the same wire types), or Elastic Common
//     Schema documents (docs/ecs.md). Tee copies it to an events file.
//   - NewTop and NewTopFrame: top-sources' snapshots, appended or redrawn
//     in place on a terminal.
//   - NewStatus: `cttrace status`'s report.
//   - NewFeatures: `cttrace features`' report.
//
// Writers buffer: the caller flushes, so a burst of records costs one
// write(2), not one per record.
package output

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"

	"github.com/cttrace/cttrace/pkg/event"
)

// Format is how a view is written.
type Format string

const (
	Text Format = "text" // aligned, for people
	JSON Format = "json" // one JSON document a line, for programs
)

// ParseFormat reads --output.
func ParseFormat(s string) (Format, error) {
	switch f := Format(s); f {
	case Text, JSON:
		return f, nil
	}
	return "", fmt.Errorf("unknown output format %q (want text or json)", s)
}

// Writer writes the values of one view.
type Writer[T any] interface {
	Write(T) error
	// Flush writes out what is buffered.
	Flush() error
}

// StreamOptions shape a stream of records.
type StreamOptions struct {
	// ECS writes JSON records as Elastic Common Schema documents rather
	// than in cttrace's schema.
	ECS bool
	// UTC prints text times in UTC rather than in the local zone.
	UTC bool
}

// NewStream writes records as format says. A text stream has no summary
// line: people read the summary on stderr (WriteSummaryText), where it
// does not mix with the lines a pipe reads; JSON streams end with it.
func NewStream(w io.Writer, f Format, o StreamOptions) Writer[*event.Record] {
	switch {
	case f == JSON && o.ECS:
		return newECS(w)
	case f == JSON:
		return newJSON(w)
	}
	t := newText(w)
	t.utc = o.UTC
	return t
}

// Discard is a stream that writes nothing: the main output of a command
// whose records go only to an events file (serve).
var Discard Writer[*event.Record] = discard{}

type discard struct{}

func (discard) Write(*event.Record) error { return nil }
func (discard) Flush() error              { return nil }

// document is the Writer of a view that is one document a value: text as
// the view lays it out, or one JSON value a line (indented when indent).
type document[T any] struct {
	w      *bufio.Writer
	text   func(io.Writer, T) error
	json   func(T) any // the value encoded; nil: text only
	format Format
	indent bool
}

func newDocument[T any](w io.Writer, f Format, text func(io.Writer, T) error, toJSON func(T) any) *document[T] {
	return &document[T]{w: bufio.NewWriter(w), text: text, json: toJSON, format: f}
}

func (d *document[T]) Write(v T) error {
	if d.format != JSON {
		return d.text(d.w, v)
	}
	enc := json.NewEncoder(d.w)
	if d.indent {
		enc.SetIndent("", "  ")
	}
	return enc.Encode(d.json(v))
}

func (d *document[T]) Flush() error { return d.w.Flush() }
