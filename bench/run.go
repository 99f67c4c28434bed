package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/cttrace/cttrace/internal/ctlab"
)

// Point is one flood of a sweep.
type Point struct {
	Sweep string // "rate" or "sources"
	Label string // "10k/s", "max", "1 source", ...
	Spec  ctlab.FloodSpec
}

// Steady says whether the point is a steady-state flood: new flows
// admitted into a table far from full (flushed before each flood), rather
// than refused by a full one.
func (p Point) Steady() bool { return p.Sweep == SteadySweep }

// SteadySweep is the Sweep of steady-state points.
const SteadySweep = "steady"

// Distinct is the number of distinct source addresses the flood uses.
func (p Point) Distinct() int {
	if p.Spec.Random && p.Spec.Sources == 0 {
		return p.Spec.Packets
	}
	return max(1, min(p.Spec.Sources, p.Spec.Packets))
}

// Options is a bench run.
type Options struct {
	Rounds int
	Points []Point
	Kinds  []Kind
	// StatsDivisor: the flood measured with BPF statistics on has
	// Packets/StatsDivisor packets (same rate and sources).
	StatsDivisor int
	Log          io.Writer
}

// Sample is one tracer at one point in one round.
type Sample struct {
	Round int    `json:"round"`
	Sweep string `json:"sweep"`
	Point string `json:"point"`
	Kind  Kind   `json:"kind"`

	// The flood measured with statistics off.
	Packets   int           `json:"packets"`
	Refused   int           `json:"refused"`
	Admitted  int           `json:"admitted,omitempty"` // steady state: flows admitted
	Elapsed   time.Duration `json:"elapsed_ns"`
	PPS       float64       `json:"pps"`
	SenderCPU time.Duration `json:"sender_cpu_ns"` // this process's CPU during that flood

	// At the maximum rate: an untraced flood of the same packets just
	// before the tracer started (0 otherwise).
	RefPPS       float64       `json:"ref_pps"`
	RefSenderCPU time.Duration `json:"ref_sender_cpu_ns"`

	// The flood measured with statistics on.
	BPFRunTimeNs uint64 `json:"bpf_run_time_ns"`
	BPFRunCnt    uint64 `json:"bpf_run_cnt"`
	StatsDrops   int64  `json:"stats_drops"`
	StatsFlows   int64  `json:"stats_flows,omitempty"` // steady state: flows admitted
	Programs     int    `json:"programs"`

	// The tracer over both floods.
	TracerCPU   time.Duration `json:"tracer_cpu_ns"`
	CPUWindow   time.Duration `json:"cpu_window_ns"`       // wall time TracerCPU was measured over
	CPUDrops    int64         `json:"cpu_drops"`           // kernel drops in the tracer-CPU window
	CPUFlows    int64         `json:"cpu_flows,omitempty"` // steady state: flows admitted in that window
	PeakRSS     int64         `json:"peak_rss"`
	KernelDrops int64         `json:"kernel_drops"` // namespace drop delta over the tracer's life
	Reported    int64         `json:"reported"`
	Header      int64         `json:"header"`   // top-sources namespace line; -1 otherwise
	Streamed    int64         `json:"streamed"` // drops: of Reported, streamed one by one; -1 otherwise
	Lost        int64         `json:"lost"`
	// Steady state: flows admitted over the tracer's life, and the inserts
	// top-sources counted (-1 for the others; 0 where the backend cannot
	// see inserts).
	Flows   int64  `json:"flows,omitempty"`
	Inserts int64  `json:"inserts,omitempty"`
	Backend string `json:"backend,omitempty"`
	Note    string `json:"note,omitempty"`
}

// Run alternates the tracers over the points, round after round (the
// tracers' order rotates by one each round), in lab. For refused-flow points
// its table must be held full so that every packet is refused; for steady
// points (all of them or none) it must hold nothing and have room for every
// flood's flows, and it is flushed before each flood. It returns every
// sample taken until ctx is cancelled or a step fails.
func Run(ctx context.Context, lab *ctlab.Lab, env Env, opt Options) ([]Sample, error) {
	var samples []Sample
	total := opt.Rounds * len(opt.Points) * len(opt.Kinds)
	start := time.Now()
	for round := range opt.Rounds {
		for _, p := range opt.Points {
			for j := range opt.Kinds {
				k := opt.Kinds[(j+round)%len(opt.Kinds)]
				if err := ctx.Err(); err != nil {
					return samples, err
				}
				tag := fmt.Sprintf("r%d-%s-%s-%s", round, p.Sweep, sanitize(p.Label), k)
				s, err := measure(ctx, lab, env, opt, p, k, tag)
				s.Round, s.Sweep, s.Point, s.Kind = round, p.Sweep, p.Label, k
				if err != nil {
					return samples, fmt.Errorf("round %d, %s %s, %s: %w", round+1, p.Sweep, p.Label, k, err)
				}
				samples = append(samples, s)
				if opt.Log != nil {
					done := len(samples)
					eta := time.Duration(float64(time.Since(start)) / float64(done) * float64(total-done))
					seen := fmt.Sprintf("reported %d of %d drops, lost %d", s.Reported, s.KernelDrops, s.Lost)
					switch {
					case p.Steady() && k.IsTop():
						seen = fmt.Sprintf("%d flows admitted, %d inserts counted", s.Flows, s.Inserts)
					case p.Steady():
						seen = fmt.Sprintf("%d flows admitted", s.Admitted)
					case k == Untraced:
						seen = fmt.Sprintf("%d drops", s.KernelDrops)
					}
					fmt.Fprintf(opt.Log, "bench: [%d/%d, ~%v left] round %d %-7s %-16s %-20s %8.0f pps  %s%s\n",
						done, total, eta.Round(time.Second), round+1, p.Sweep, p.Label, k, s.PPS, seen, noteSuffix(s.Note))
				}
			}
		}
	}
	return samples, nil
}

func joinNote(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

func noteSuffix(n string) string {
	if n == "" {
		return ""
	}
	return "  (" + n + ")"
}

func sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			b[i] = '_'
		}
	}
	return string(b)
}

// measure runs one tracer at one point: start it, flood with BPF statistics
// on (BPF time per run), flood with them off (the rate), stop it.
func measure(ctx context.Context, lab *ctlab.Lab, env Env, opt Options, p Point, k Kind, tag string) (s Sample, err error) {
	s.Header, s.Streamed, s.Inserts = -1, -1, -1
	// Steady state: every flood starts from an empty table.
	flush := func() error {
		if !p.Steady() {
			return nil
		}
		return lab.Flush(30 * time.Second)
	}
	if err := flush(); err != nil {
		return s, err
	}
	// As fast as possible, the machine's own rate drifts by ±10 % over
	// seconds: an untraced reference flood just before the tracer starts
	// gives the ratio a denominator from the same moment.
	if p.Spec.Rate == 0 && k != Untraced {
		c0 := SelfCPU()
		ref, err := lab.Flood(p.Spec)
		if err != nil {
			return s, err
		}
		s.RefSenderCPU = SelfCPU() - c0
		s.RefPPS = float64(ref.Sent+ref.Refused) / ref.Elapsed.Seconds()
		if err := flush(); err != nil {
			return s, err
		}
	}
	s0, err := settled(ctx, lab)
	if err != nil {
		return s, err
	}
	t, err := Start(ctx, k, env, tag)
	if err != nil {
		return s, err
	}
	defer func() {
		if err != nil {
			t.Kill()
		}
	}()
	if t != nil {
		s.Backend, s.Programs = t.Backend, len(t.Progs)
	}
	drainTimeout := 60 * time.Second

	var cpu0 time.Duration
	var window time.Time
	if t != nil {
		window = time.Now()
		if cpu0, err = ProcCPU(t.PID()); err != nil {
			return s, err
		}
		// Statistics on: BPF time per run of the tracer's programs.
		stats := p.Spec
		stats.Packets = max(1, p.Spec.Packets/max(1, opt.StatsDivisor))
		on, err := EnableStats()
		if err != nil {
			return s, err
		}
		before, err := BPFToolStats(t.Progs)
		if err != nil {
			on.Close()
			return s, err
		}
		a, err := lab.Stats()
		if err != nil {
			on.Close()
			return s, err
		}
		sres, ferr := lab.Flood(stats)
		end := time.Now()
		s.StatsFlows = int64(sres.Sent)
		after, err := BPFToolStats(t.Progs)
		on.Close()
		if err := errors.Join(ferr, err); err != nil {
			return s, err
		}
		s.BPFRunTimeNs, s.BPFRunCnt = SumStats(before, after)
		b, err := settled(ctx, lab)
		if err != nil {
			return s, err
		}
		s.StatsDrops = b.Drop - a.Drop
		if err := t.Drain(ctx, b.Drop-s0.Drop, end, drainTimeout); err != nil {
			if ctx.Err() != nil {
				return s, ctx.Err()
			}
			s.Note = joinNote(s.Note, err.Error())
		}
		if p.Steady() {
			// The flush's deletes are not the flood's work: the tracer's
			// CPU is measured over the rate flood only.
			if err := flush(); err != nil {
				return s, err
			}
			window = time.Now()
			if cpu0, err = ProcCPU(t.PID()); err != nil {
				return s, err
			}
		}
	}

	// Statistics off: the flood's rate.
	c0 := SelfCPU()
	res, err := lab.Flood(p.Spec)
	end := time.Now()
	s.SenderCPU = SelfCPU() - c0
	if err != nil {
		return s, err
	}
	s.Packets, s.Refused, s.Elapsed = p.Spec.Packets, res.Refused, res.Elapsed
	s.PPS = float64(res.Sent+res.Refused) / res.Elapsed.Seconds()
	switch {
	case p.Steady():
		s.Admitted = res.Sent
		s.Flows = s.StatsFlows + int64(res.Sent)
		if res.Sent != p.Spec.Packets {
			s.Note = joinNote(s.Note, fmt.Sprintf("only %d of %d flows admitted: table full?", res.Sent, p.Spec.Packets))
		}
	case res.Refused != p.Spec.Packets:
		s.Note = joinNote(s.Note, fmt.Sprintf("only %d of %d refused: table not full?", res.Refused, p.Spec.Packets))
	}
	s1, err := settled(ctx, lab)
	if err != nil {
		return s, err
	}
	if t != nil {
		if err := t.Drain(ctx, s1.Drop-s0.Drop, end, drainTimeout); err != nil {
			if ctx.Err() != nil {
				return s, ctx.Err()
			}
			s.Note = joinNote(s.Note, err.Error())
		}
		cpu1, err := ProcCPU(t.PID())
		if err != nil {
			return s, err
		}
		s.TracerCPU, s.CPUDrops, s.CPUWindow = cpu1-cpu0, s1.Drop-s0.Drop, time.Since(window)
		if p.Steady() {
			s.CPUFlows = int64(res.Sent)
		}
		if s.PeakRSS, err = PeakRSS(t.PID()); err != nil {
			return s, err
		}
		o, err := t.Stop()
		if errors.Is(err, ErrStopTimeout) {
			s.Note = joinNote(s.Note, err.Error())
		} else if err != nil {
			return s, err
		}
		s.Reported, s.Lost, s.Header, s.Streamed = o.Reported, o.Lost, o.Header, o.Streamed
		if p.Steady() && k.IsTop() {
			s.Inserts = o.Inserts
		}
	}
	s2, err := settled(ctx, lab)
	if err != nil {
		return s, err
	}
	s.KernelDrops = s2.Drop - s0.Drop
	return s, nil
}

// settled reads the lab's statistics until two reads 20 ms apart agree
// (packets still queued on the loopback hold references that delay frees).
func settled(ctx context.Context, lab *ctlab.Lab) (ctlab.Stats, error) {
	prev, err := lab.Stats()
	if err != nil {
		return prev, err
	}
	for range 500 {
		if err := ctx.Err(); err != nil {
			return prev, err
		}
		time.Sleep(20 * time.Millisecond)
		cur, err := lab.Stats()
		if err != nil {
			return cur, err
		}
		if cur == prev {
			return cur, nil
		}
		prev = cur
	}
	return prev, fmt.Errorf("lab statistics still changing after 10 s: %v", prev)
}
