// Package output writes what `cttrace drops` sees: NDJSON for pipelines
// (JSONWriter, the format docs/drops.md documents and
// docs/drops-schema-v1.json pins down) and aligned text for people
// (TextWriter). Both buffer: the caller flushes, so a burst of events costs
// one write(2), not one per event.
package output

import (
	"time"

	"github.com/cttrace/cttrace/pkg/event"
)

// SchemaVersion is the NDJSON schema's version, written in every record.
// Fields are only ever added within a version; renaming or removing one, or
// changing its type or meaning, bumps it.
const SchemaVersion = 1

// Writer is where events, losses and the final summary go.
type Writer interface {
	// Event writes one event.
	Event(*event.Event) error
	// Lost reports n events the kernel could not deliver (ring buffer full)
	// since the last report, total since the start, noticed at t.
	Lost(n, total uint64, t time.Time) error
	// Aggregate writes a count of events past the stream limit.
	Aggregate(*event.Aggregate) error
	// Summary writes the totals at exit.
	Summary(Summary) error
	// Flush writes out what is buffered.
	Flush() error
}

// Summary is what a run saw, written once at exit.
type Summary struct {
	Time    time.Time // when the run ended
	Backend string    // the probe backend used (fentry, kprobe, tracepoint)
	// Events counts events by reason. JSON lists every reason (absent =
	// 0), as the schema requires; text lists only the reasons present as
	// keys, so a caller that counted only some reasons can leave the others
	// out rather than print a misleading "insert=0".
	Events map[event.Reason]uint64
	// Visible lists the reasons the backend can see at all: a 0 in Events
	// for a reason not listed means "not visible", not "none happened".
	Visible []event.Reason
	Lost    uint64 // events the kernel could not deliver, in all
	// Aggregated is the events written in aggregates (past the stream
	// limit) rather than one by one, in all.
	Aggregated uint64
	Duration   time.Duration
}
