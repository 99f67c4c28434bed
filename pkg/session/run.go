package session

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/probe"
)

// Tick is how often Run reports lost events and aggregates.
const Tick = time.Second

// Run reads the ring buffer and hands each record to h until ctx is done,
// h returns ErrStop, or nf_conntrack goes away (probe.ErrConntrackGone,
// returned after what was read before is delivered). The summary is the
// last record, unless h failed.
func (s *Session) Run(ctx context.Context, h Handler) error {
	err := Stopped(s.run(ctx, h))
	if err != nil && !errors.Is(err, probe.ErrConntrackGone) {
		return err
	}
	sum, serr := s.Summary()
	if serr == nil {
		serr = Stopped(h.Record(&event.Record{Summary: &sum}))
	}
	return errors.Join(err, serr)
}

func (s *Session) run(ctx context.Context, h Handler) error {
	stop := context.AfterFunc(ctx, func() { s.reader.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	var ev event.Event
	rec := event.Record{Event: &ev}
	next := time.Now().Add(Tick)
	for {
		if ctx.Err() != nil {
			return s.finish(h, &rec)
		}
		if err := s.Err(); err != nil {
			// What was read before the unload is still delivered.
			return errors.Join(s.finish(h, &rec), err)
		}
		// Woken at least as often as the session is maintained, to see
		// its end.
		s.reader.SetDeadline(time.Now().Add(maintainEvery))
		err := s.reader.Read(&ev)
		switch {
		case err == nil:
			if err := h.Record(&rec); err != nil {
				return err
			}
		case errors.Is(err, os.ErrDeadlineExceeded):
		default:
			return fmt.Errorf("read events: %w", err)
		}
		if s.reader.Drained() {
			if err := h.Idle(); err != nil {
				return err
			}
		}
		if !time.Now().Before(next) {
			next = time.Now().Add(Tick)
			if err := s.tick(h); err != nil {
				return err
			}
		}
	}
}

// finish detaches the probes, so that a flood that goes on cannot keep the
// ring buffer from emptying, then hands over what the kernel wrote before,
// so that every event is either delivered or counted as lost.
func (s *Session) finish(h Handler, rec *event.Record) error {
	if err := s.probe.Detach(); err != nil {
		return fmt.Errorf("detach: %w", err)
	}
	// A deadline already past, not none: the records were written without
	// a wakeup (BPF_RB_NO_WAKEUP), so a reader waiting for one would wait
	// for ever; past its deadline it reads what is there.
	s.reader.SetDeadline(time.Unix(1, 0))
	for empty := 0; !s.reader.Drained(); {
		err := s.reader.Read(rec.Event)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// Bytes left that no read returns would be a record still
			// reserved; the programs are detached, so none can be.
			if empty++; empty > 3 {
				return errors.New("read events: ring buffer not empty but nothing to read")
			}
			continue
		}
		empty = 0
		if err != nil {
			return fmt.Errorf("read events: %w", err)
		}
		if err := h.Record(rec); err != nil {
			return err
		}
	}
	if err := h.Idle(); err != nil {
		return err
	}
	return s.tick(h)
}

// tick reports, every Tick and at the end, what did not come one by one:
// events lost, and events aggregated past the stream limit.
func (s *Session) tick(h Handler) error {
	total, err := s.probe.Lost()
	if err != nil {
		return err
	}
	if total > s.lost {
		lost := event.Lost{Time: time.Now(), Lost: total - s.lost, Total: total}
		s.lost = total
		if err := h.Record(&event.Record{Lost: &lost}); err != nil {
			return err
		}
	}
	if s.agg == nil {
		return h.Idle()
	}
	batch, err := s.agg.interval(s.probe, s.reader.Clock(), time.Now())
	if err != nil {
		return err
	}
	for i := range batch {
		if err := h.Record(&event.Record{Aggregate: &batch[i]}); err != nil {
			return err
		}
	}
	return h.Idle()
}
