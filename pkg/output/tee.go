package output

import (
	"io"
	"sync"

	"github.com/cttrace/cttrace/pkg/event"
)

// Tee is a stream that copies every record to an events file, as JSON
// (cttrace's schema or ECS), beside the main output: what a SIEM shipper
// (Filebeat, Vector, Fluent Bit) tails while the operator watches. The
// file's failures never stop the run: a full disk must not cost the
// operator the screen or the kernel side anything. They are counted and
// the first is kept (Failures), where a scrape may read them while the run
// writes.
type Tee struct {
	main Writer[*event.Record]
	file Writer[*event.Record]

	mu     sync.Mutex
	errors uint64
	first  error
}

// NewTee copies what main is given to file (a RotatingFile), in cttrace's
// schema or, with ecs, in the Elastic Common Schema. The file gets every
// record, the summary included, whatever main shows.
func NewTee(main Writer[*event.Record], file io.Writer, ecs bool) *Tee {
	return &Tee{main: main, file: NewStream(file, JSON, StreamOptions{ECS: ecs})}
}

// Write writes the record to both.
func (e *Tee) Write(r *event.Record) error {
	e.note(e.file.Write(r))
	return e.main.Write(r)
}

// Flush flushes both.
func (e *Tee) Flush() error {
	e.note(e.file.Flush())
	return e.main.Flush()
}

func (e *Tee) note(err error) {
	if err == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.errors++
	if e.first == nil {
		e.first = err
	}
}

// Failures returns how many writes to the file failed, and the first error.
func (e *Tee) Failures() (uint64, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.errors, e.first
}
