// Package session is the live source on the path of one event: it picks the
// backend the kernel allows, attaches it (pkg/probe), keeps it current while
// it runs (nf_conntrack_max, the admission of the kernel's bounded maps), and
// hands over what the kernel saw: each streamed event, aggregate, loss and
// the closing summary as a record (Run), and the per-source and
// per-namespace counts the views read (Sources, Counts, NamespaceCounts).
package session

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/host"
	"github.com/cttrace/cttrace/pkg/probe"
	"github.com/cttrace/cttrace/pkg/table"
)

// Config says what to trace and where to tell the operator about it.
type Config struct {
	Backend probe.Backend
	// Reasons lists the reasons whose events user space wants one by one;
	// every reason is counted in the kernel whatever this says.
	Reasons   []event.Reason
	RingBytes uint32
	// Sources turns on per-source and per-namespace counting in the
	// kernel (top-sources, serve).
	Sources probe.SourceOptions
	// Stream bounds the events streamed one by one (the rest arrive as
	// aggregates) and selects namespaces.
	Stream probe.StreamOptions
	// Log receives the start-up lines (backend and why, missing hooks).
	Log io.Writer
	// PerFlowOnPressure attaches the per-flow hooks only from the first
	// refusal until QuietPeriod passes without one (pressure.go).
	PerFlowOnPressure bool
	QuietPeriod       time.Duration // 0: DefaultQuietPeriod
	// FillHigh is the fill of a table that attaches them (0:
	// DefaultFillHigh; above 1: refusals only).
	FillHigh float64
}

// Session is an attached probe, its reader and what keeps them current.
type Session struct {
	backend probe.Backend
	probe   *probe.Probe
	reader  *probe.Reader
	sources *probe.Sampler // nil without Config.Sources
	agg     *aggregates    // nil without a stream limit
	start   time.Time
	lost    uint64 // reported in Lost records so far
	// pressure switches the per-flow hooks; nil when they stay attached.
	pressure *pressure
	// tables is the scan of every namespace's table that the pressure
	// policy and the ranking (ScanTables) share.
	tables *table.SharedScan

	stop     chan struct{}
	stopped  sync.WaitGroup
	closed   sync.Once
	mu       sync.Mutex
	maintErr error // what ended the maintenance: nf_conntrack gone, or a read failed
}

// Start detects what the kernel allows, chooses the backend and attaches it.
func Start(cfg Config) (*Session, error) {
	if err := host.RequireConntrack(); err != nil {
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
	p, err := probe.Attach(f, b, probe.Options{StreamMask: streamMask(cfg.Reasons), RingBytes: ring, Sources: cfg.Sources, Stream: cfg.Stream,
		PerFlowOnPressure: cfg.PerFlowOnPressure})
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
	s := &Session{backend: b, probe: p, start: time.Now(), stop: make(chan struct{}), tables: table.NewSharedScan(sharedScanAge)}
	if cfg.PerFlowOnPressure && p.HasPerFlowHooks() {
		s.pressure = newPressure(cmp.Or(cfg.QuietPeriod, DefaultQuietPeriod), cmp.Or(cfg.FillHigh, DefaultFillHigh), s.tables.Scan, func(err error) {
			if cfg.Log != nil {
				fmt.Fprintf(cfg.Log, "cttrace: warning: the tables' fill cannot be read (%v): only refusals and clashes attach the per-flow hooks until it can\n", err)
			}
		})
	}
	if err := s.open(cfg); err != nil {
		s.closeProbe()
		return nil, err
	}
	if s.pressure != nil {
		// A table already past the mark (or refusing) gets the per-flow
		// hooks now, not a maintenance tick after the caller is ready.
		if err := s.pressure.check(s.probe, time.Now()); err != nil {
			s.closeProbe()
			return nil, err
		}
	}
	s.stopped.Add(1)
	go s.maintain()
	return s, nil
}

// open sets up the reader and the samplers of the bounded maps in use.
func (s *Session) open(cfg Config) error {
	var err error
	if s.reader, err = s.probe.NewReader(); err != nil {
		return err
	}
	if cfg.Sources.Enabled {
		readEvery := cfg.Sources.ReadEvery
		if readEvery <= 0 {
			readEvery = time.Second
		}
		if s.sources, err = s.probe.NewSampler(probe.SourcesMap, readEvery); err != nil {
			return err
		}
	}
	if cfg.Stream.Limit > 0 && len(cfg.Reasons) > 0 {
		if s.agg, err = newAggregates(s.probe, s.start); err != nil {
			return err
		}
	}
	return nil
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

// maintainEvery is how often the kernel side is told nf_conntrack_max
// (operators change it under attack: events carry the value at most this
// old) and the bounded maps' admission is adjusted (a flood's rate changes
// faster than a view refreshes).
const maintainEvery = 100 * time.Millisecond

// maintain keeps the kernel side current until Close. It stops at the
// first failure, kept for Run and the readers to report: nf_conntrack
// unloaded (probe.ErrConntrackGone) ends the run.
func (s *Session) maintain() {
	defer s.stopped.Done()
	t := time.NewTicker(maintainEvery)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			if err := s.maintainOnce(now); err != nil {
				s.mu.Lock()
				s.maintErr = err
				s.mu.Unlock()
				return
			}
		}
	}
}

func (s *Session) maintainOnce(now time.Time) error {
	if err := s.probe.RefreshMax(); err != nil {
		return err
	}
	if s.pressure != nil {
		if err := s.pressure.check(s.probe, now); err != nil {
			return err
		}
	}
	for _, sm := range []*probe.Sampler{s.sources, s.agg.sampler()} {
		if sm == nil {
			continue
		}
		if err := sm.Adjust(now); err != nil {
			return err
		}
	}
	return nil
}

// Err is what stopped the session's maintenance, if anything did:
// probe.ErrConntrackGone when nf_conntrack was unloaded under the probes.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maintErr
}

// Mode is what the kernel side runs now, and how many times it switched.
// A backend without per-flow hooks (tracepoint) is always healthy; hooks
// attached for the whole run are always under pressure, with no switch.
func (s *Session) Mode() (Mode, uint64) {
	if !s.probe.HasPerFlowHooks() {
		return ModeHealthy, 0
	}
	var switches uint64
	if s.pressure != nil {
		switches = s.pressure.switches.Load()
	}
	if s.probe.PerFlow() {
		return ModePressure, switches
	}
	return ModeHealthy, switches
}

// SeesEveryInsert says whether every insert and delete of the run is
// seen: the backend sees them, and its per-flow hooks stay attached.
func (s *Session) SeesEveryInsert() bool {
	return s.Sees(event.ReasonInsert) && s.pressure == nil
}

// AwaitsPressure says the per-flow hooks are detached until a table comes
// under pressure (Config.PerFlowOnPressure, and healthy now).
func (s *Session) AwaitsPressure() bool { return s.pressure != nil && !s.probe.PerFlow() }

// ScanTables is every namespace's table, read now: the ranking's refresh,
// whose reading the per-flow hooks' policy takes when it is recent
// (pressure.go), rather than reading every namespace itself.
func (s *Session) ScanTables() ([]table.NamespaceStats, error) { return s.tables.Fresh() }

// sharedScanAge is how old a reading the policy takes (it reads the fill
// every fillEvery): a ranking that refreshes every second spares it three
// reads in four. The ranking itself always reads afresh: a namespace born
// since a reading it took again would be missing, and one missing for a
// few reads is taken for dead.
const sharedScanAge = fillEvery * 3 / 4

// Backend is the backend in use.
func (s *Session) Backend() string { return string(s.backend) }

// Sees reports whether the backend sees events of reason r at all.
func (s *Session) Sees(r event.Reason) bool {
	for _, v := range s.backend.Sees() {
		if v == r {
			return true
		}
	}
	return false
}

// Sources calls fn for every source the kernel counts now
// (Config.Sources).
func (s *Session) Sources(fn func(*event.SourceCounts) error) error {
	if err := s.Err(); err != nil {
		return err
	}
	return s.probe.Sources(s.reader.Clock(), fn)
}

// DropSources removes idle sources from the kernel's per-source map
// (probe.DropSources).
func (s *Session) DropSources(keys []event.SourceKey, last func(*event.SourceCounts)) error {
	return s.probe.DropSources(keys, s.reader.Clock(), last)
}

// SourceSampling is the kernel's admission of new sources into its
// per-source map now (1 in 2^shift) and whether it ever sampled: some
// sources were then counted in the totals only.
func (s *Session) SourceSampling() (shift uint32, sampled bool) {
	if s.sources == nil {
		return 0, false
	}
	return s.sources.Shift(), s.sources.Sampled()
}

// Counts returns, by reason, the events the kernel produced during this
// session, streamed or not (the maps are created at attach, so they start
// at zero).
func (s *Session) Counts() (event.Counts, error) { return s.probe.Produced() }

// NamespaceCounts are the events counted per network namespace, by reason
// and detail (Config.Sources).
func (s *Session) NamespaceCounts() (map[event.Netns]event.NamespaceCounts, error) {
	return s.probe.NamespaceCounts()
}

// Forget drops what the kernel side keeps of namespaces that died, so that
// neither their counts nor their place pass to the next ones
// (probe.Probe.Forget).
func (s *Session) Forget(dead []event.Netns) error { return s.probe.Forget(dead) }

// Lost is the number of events the kernel could not deliver since attach.
func (s *Session) Lost() (uint64, error) { return s.probe.Lost() }

// Summary is what the kernel saw during the session, and what this backend
// can see at all.
func (s *Session) Summary() (event.Summary, error) {
	counts, err := s.Counts()
	if err != nil {
		return event.Summary{}, err
	}
	return event.Summary{Time: time.Now(), Backend: s.Backend(), Events: counts, Visible: s.backend.Sees(),
		Lost: s.lost, Aggregated: s.agg.reported(), Duration: time.Since(s.start)}, nil
}

// Programs lists the attached programs by name, for tests.
func (s *Session) Programs() []string { return s.probe.Programs() }

// Close detaches everything; nothing is left in the kernel afterwards.
// Closing again does nothing.
func (s *Session) Close() error {
	var err error
	s.closed.Do(func() {
		close(s.stop)
		s.stopped.Wait()
		err = s.closeProbe()
	})
	return err
}

func (s *Session) closeProbe() error {
	if s.reader != nil {
		s.reader.Close()
	}
	return s.probe.Close()
}

// ErrStop ends Run without an error, for handlers that have seen enough.
var ErrStop = errors.New("stop")

// Stopped turns ErrStop into nil: the end a handler asked for.
func Stopped(err error) error {
	if errors.Is(err, ErrStop) {
		return nil
	}
	return err
}

// Handler receives what a session's run delivers.
type Handler struct {
	// Record is called with every record, in the kernel's order per CPU:
	// each event streamed, aggregates past the stream limit and losses
	// every Tick, and the summary last. The record is reused after the
	// call returns. It may return ErrStop to end the run cleanly (the
	// summary still follows); another error ends it and is returned.
	Record func(*event.Record) error
	// Idle is called when the ring buffer has been drained: the moment to
	// flush output, so a live view lags the kernel by no more than a read.
	Idle func() error
}
