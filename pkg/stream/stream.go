// Package stream is the one path every record takes to its writer, whoever
// asks: `cttrace drops`, `drops --replay` and serve's events file. A source
// of records — a live session (the kernel bounds what it streams, past
// --stream-limit it sends aggregates), or a recording read back — goes
// through the operator's filter and --count to one writer (pkg/output; an
// events file rides along as output.Tee). The run's summary closes the
// stream, and is written for people on the side (Options.Summary).
package stream

import (
	"context"
	"errors"
	"io"
	"iter"

	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/output"
	"github.com/cttrace/cttrace/pkg/session"
)

// Source is where records come from.
type Source interface {
	// Run hands every record to h, the summary last, until the source
	// ends, ctx is done or h returns session.ErrStop.
	Run(ctx context.Context, h session.Handler) error
}

// Options select what reaches the writer.
type Options struct {
	// Filter selects events and aggregates (event.Filter.Match,
	// MatchAggregate); losses and the summary always pass.
	Filter event.Filter
	// Count ends the run after that many events (0: no limit).
	Count uint64
	// Summary, when set, also gets the summary as text, for people (the
	// writer may be a pipe that takes it as a record, or not at all).
	Summary io.Writer
}

// Run copies src's records through the filter to w until src ends, ctx is
// done or Count events were written, then flushes w and writes the
// summary (if any) to o.Summary.
func Run(ctx context.Context, src Source, w output.Writer[*event.Record], o Options) error {
	var shown uint64
	var summary *event.Summary
	err := src.Run(ctx, session.Handler{
		Record: func(r *event.Record) error {
			switch {
			case r.Event != nil:
				if !o.Filter.Match(r.Event) {
					return nil
				}
				if err := w.Write(r); err != nil {
					return err
				}
				if shown++; o.Count > 0 && shown >= o.Count {
					return session.ErrStop
				}
				return nil
			case r.Aggregate != nil && !o.Filter.MatchAggregate(r.Aggregate):
				return nil
			case r.Summary != nil:
				s := *r.Summary
				summary = &s
			}
			return w.Write(r)
		},
		Idle: w.Flush,
	})
	err = errors.Join(err, w.Flush())
	if summary != nil && o.Summary != nil {
		err = errors.Join(err, output.WriteSummaryText(o.Summary, summary))
	}
	return err
}

// Recording is a recorded stream read back as a Source (`--replay`). Its
// records keep the host that wrote them.
type Recording iter.Seq2[*event.Record, error]

// Run hands every record of the recording to h, until it ends or h stops
// it. A recording cut short has no summary: none is made up.
func (rec Recording) Run(_ context.Context, h session.Handler) error {
	for r, err := range rec {
		if err != nil {
			return err
		}
		if err := h.Record(r); err != nil {
			return session.Stopped(err)
		}
	}
	return nil
}
