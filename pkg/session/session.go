// Package session runs one live trace: it picks the backend the kernel
// allows, attaches it, and feeds every event to the caller until asked to
// stop, reporting on the way what the kernel could not deliver.
package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/probe"
)

// Config says what to trace and where to tell the operator about it.
type Config struct {
	Backend probe.Backend
	// Reasons lists the reasons whose events user space wants one by one;
	// every reason is counted in the kernel whatever this says.
	Reasons   []event.Reason
	RingBytes uint32
	// Sources turns on per-source counting in the kernel (top-sources).
	Sources probe.SourceOptions
	// Stream bounds the events streamed one by one (the rest is
	// aggregated, see Handler.Aggregate) and selects namespaces.
	Stream probe.StreamOptions
	// Log receives the start-up lines (backend and why, missing hooks).
	Log io.Writer
}

// Session is an attached probe and its reader.
type Session struct {
	Backend probe.Backend
	Probe   *probe.Probe
	reader  *probe.Reader
	agg     *aggregator // nil without a stream limit
	start   time.Time
	lost    uint64
}

// ErrNoConntrack says that there is no connection tracking to watch.
var ErrNoConntrack = errors.New("nf_conntrack is not loaded, so no connection tracking is in use on this host " +
	"(check with `lsmod | grep nf_conntrack` or `ls /proc/sys/net/netfilter/nf_conntrack_max`; " +
	"any stateful firewall rule, NAT or Kubernetes loads it)")

// RequireConntrack returns ErrNoConntrack when there is nothing to trace:
// what `features` and the tracing commands agree on.
func RequireConntrack() error {
	if _, err := os.Stat(probe.MaxPath); errors.Is(err, os.ErrNotExist) {
		return ErrNoConntrack
	}
	return nil
}

// Start detects what the kernel allows, chooses the backend and attaches it.
func Start(cfg Config) (*Session, error) {
	if err := RequireConntrack(); err != nil {
		return nil, err
	}
	f, err := probe.DetectBackends()
	if err != nil {
		return nil, err
	}
	b, why, err := f.ChooseBackend(cfg.Backend)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(cfg.Log, "cttrace: backend %s (%s)\n", b, why)
	ring := cfg.RingBytes
	if len(cfg.Reasons) == 0 {
		ring = uint32(os.Getpagesize()) // nothing streamed: the smallest ring
	}
	p, err := probe.Attach(f, b, probe.Options{StreamMask: streamMask(cfg.Reasons), RingBytes: ring, Sources: cfg.Sources, Stream: cfg.Stream})
	if err != nil {
		return nil, err
	}
	for _, m := range p.Missing {
		fmt.Fprintf(cfg.Log, "cttrace: warning: %s\n", m)
	}
	if b == probe.BackendTracepoint {
		fmt.Fprintln(cfg.Log, "cttrace: the tracepoint backend sees only dropped packets: table_full and insert_failed are inferred, "+
			"early_drop, insert and delete are not visible")
	}
	r, err := p.NewReader()
	if err != nil {
		p.Close()
		return nil, err
	}
	s := &Session{Backend: b, Probe: p, reader: r, start: time.Now()}
	if cfg.Stream.Limit > 0 && len(cfg.Reasons) > 0 {
		if s.agg, err = newAggregator(p, s.start); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// streamMask turns reasons into the kernel's bit mask of event types.
func streamMask(reasons []event.Reason) uint32 {
	var m uint32
	for _, r := range reasons {
		if t := r.KernelType(); t != 0 {
			m |= 1 << t
		}
	}
	return m
}

// Tick is how often Run reports lost events.
const Tick = time.Second

// maxRefresh is how often the kernel side is told nf_conntrack_max, which
// operators change under attack: events carry the value at most this old.
const maxRefresh = 100 * time.Millisecond

// Handler receives what a session sees. Any callback may return ErrStop to
// end the run cleanly; another error ends it and is returned.
type Handler struct {
	// Event is called for every event read, in the kernel's order per CPU.
	// The event (and its Trigger) is reused after the call returns.
	Event func(*event.Event) error
	// Idle is called when the ring buffer has been drained: the moment to
	// flush output, so a live view lags the kernel by no more than a read.
	Idle func() error
	// Tick is called every Tick with the events the kernel could not
	// deliver since the last call, and once more at the end.
	Tick func(lost uint64) error
	// Aggregate is called every Tick, and once more at the end, with the
	// events past the stream limit (Config.Stream) counted in the kernel
	// since the last call. The slice is reused by the next call.
	Aggregate func([]event.Aggregate) error
}

// Run feeds events to h until ctx is done or a callback stops it.
func (s *Session) Run(ctx context.Context, h Handler) error {
	stop := context.AfterFunc(ctx, func() { s.reader.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	var ev event.Event
	next := time.Now().Add(Tick)
	nextMax := time.Now().Add(maxRefresh)
	for {
		if ctx.Err() != nil {
			return stopped(s.finish(h, &ev))
		}
		s.reader.SetDeadline(nextMax)
		err := s.reader.Read(&ev)
		switch {
		case err == nil:
			if err := h.Event(&ev); err != nil {
				return stopped(err)
			}
		case errors.Is(err, os.ErrDeadlineExceeded):
		default:
			return fmt.Errorf("read events: %w", err)
		}
		if s.reader.Drained() {
			if err := h.Idle(); err != nil {
				return stopped(err)
			}
		}
		if !time.Now().Before(nextMax) {
			nextMax = time.Now().Add(maxRefresh)
			if err := s.Probe.RefreshMax(); errors.Is(err, probe.ErrConntrackGone) {
				// What was read before the unload is still delivered.
				if err := s.finish(h, &ev); err != nil {
					return stopped(err)
				}
				return err
			} else if err != nil {
				return err
			}
			if s.agg != nil {
				if err := s.agg.sampler.Adjust(time.Now()); err != nil {
					return err
				}
			}
		}
		if !time.Now().Before(next) {
			next = time.Now().Add(Tick)
			if err := s.tick(h); err != nil {
				return stopped(err)
			}
		}
	}
}

// finish detaches the probes, so that a flood that goes on cannot keep the
// ring buffer from emptying, then hands over what the kernel wrote before,
// so that every event is either delivered or counted as lost.
func (s *Session) finish(h Handler, ev *event.Event) error {
	if err := s.Probe.Detach(); err != nil {
		return fmt.Errorf("detach: %w", err)
	}
	// A deadline already past, not none: the records were written without
	// a wakeup (BPF_RB_NO_WAKEUP), so a reader waiting for one would wait
	// for ever; past its deadline it reads what is there.
	s.reader.SetDeadline(time.Unix(1, 0))
	for empty := 0; !s.reader.Drained(); {
		err := s.reader.Read(ev)
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
		if err := h.Event(ev); err != nil {
			return err
		}
	}
	if err := h.Idle(); err != nil {
		return err
	}
	return s.tick(h)
}

// ErrStop ends Run without an error, for callbacks that have seen enough.
var ErrStop = errors.New("stop")

func stopped(err error) error {
	if errors.Is(err, ErrStop) {
		return nil
	}
	return err
}

// tick reports, every Tick and at the end, what did not come one by one:
// events lost, and events aggregated past the stream limit.
func (s *Session) tick(h Handler) error {
	total, err := s.Probe.Lost()
	if err != nil {
		return err
	}
	delta := total - s.lost
	s.lost = total
	if err := h.Tick(delta); err != nil {
		return err
	}
	if s.agg == nil || h.Aggregate == nil {
		return nil
	}
	batch, err := s.agg.interval(s.Probe, s.reader.Clock(), time.Now())
	if err != nil {
		return err
	}
	if len(batch) == 0 {
		return nil
	}
	return h.Aggregate(batch)
}

// NamespaceTotals returns the events counted per network namespace, by
// reason (Config.Sources).
func (s *Session) NamespaceTotals() (map[uint32]map[event.Reason]uint64, error) {
	return s.Probe.NamespaceTotals()
}

// NamespaceDetails are the per-namespace counts of each detail
// (probe.Probe.NamespaceDetails).
func (s *Session) NamespaceDetails() (map[uint32]map[event.Detail]uint64, error) {
	return s.Probe.NamespaceDetails()
}

// Sources calls fn for every source the kernel counts now (Config.Sources).
func (s *Session) Sources(fn func(*probe.SourceTotals) error) error {
	return s.Probe.Sources(s.reader.Clock(), fn)
}

// Lost is the number of events the kernel could not deliver in this run.
func (s *Session) Lost() uint64 { return s.lost }

// Aggregated is the number of events reported in aggregates (past the
// stream limit) in this run.
func (s *Session) Aggregated() uint64 {
	if s.agg == nil {
		return 0
	}
	var n uint64
	for _, m := range []map[event.Reason]uint64{s.agg.named, s.agg.other} {
		for _, c := range m {
			n += c
		}
	}
	return n
}

// Totals returns, by reason, the events the kernel produced during this
// session, streamed or not (the maps are created at attach, so they start
// at zero).
func (s *Session) Totals() (map[event.Reason]uint64, error) {
	counts, err := s.Probe.Produced()
	if err != nil {
		return nil, err
	}
	totals := map[event.Reason]uint64{}
	for t, n := range counts {
		if r := event.ReasonFromKernel(uint32(t)); r.Valid() {
			totals[r] = n
		}
	}
	return totals, nil
}

// Elapsed is how long the session has run.
func (s *Session) Elapsed() time.Duration { return time.Since(s.start) }

// Close detaches everything; nothing is left in the kernel afterwards.
func (s *Session) Close() error {
	s.reader.Close()
	return s.Probe.Close()
}
