package probe

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"

	"github.com/cttrace/cttrace/pkg/event"
)

// SourceOptions turns on per-source counting in the kernel, for
// top-sources. The map is LRU and holds at most Max sources, so a flood of
// spoofed addresses cannot grow it.
type SourceOptions struct {
	Enabled bool
	Max     uint32 // sources tracked in the kernel (0: the object's 65536)
	V4Bits  uint8  // group IPv4 sources by this prefix length (0: 32)
	V6Bits  uint8  // group IPv6 sources by this prefix length (0: 128)
}

func (o SourceOptions) withDefaults() SourceOptions {
	if o.V4Bits == 0 {
		o.V4Bits = 32
	}
	if o.V6Bits == 0 {
		o.V6Bits = 128
	}
	return o
}

func (o SourceOptions) apply(spec *ebpf.CollectionSpec) error {
	if !o.Enabled {
		return nil
	}
	v4, v6 := o.V4Bits, o.V6Bits
	if v4 > 32 || v6 > 128 {
		return fmt.Errorf("invalid source grouping /%d, /%d", v4, v6)
	}
	for name, v := range map[string]uint32{"aggregate_sources": 1, "group_v4_bits": uint32(v4), "group_v6_bits": uint32(v6)} {
		if err := spec.Variables[name].Set(v); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	if o.Max != 0 {
		spec.Maps["sources"].MaxEntries = o.Max
	}
	return nil
}

// SourceTotals is what the kernel counted for one source (or prefix) in one
// network namespace since the probes were attached.
type SourceTotals struct {
	Netns  uint32
	Prefix netip.Prefix
	// Events is indexed by the kernel's event type; use Count.
	Events         [cttraceCtEventTypeCT_EV_MAX]uint64
	LastDrop       time.Time
	LastDropReason event.Reason
}

// Count returns the source's events of reason r.
func (s *SourceTotals) Count(r event.Reason) uint64 {
	for t := range s.Events {
		if event.ReasonFromKernel(uint32(t)) == r {
			return s.Events[t]
		}
	}
	return 0
}

// sourceBatch is how many sources one BPF_MAP_LOOKUP_BATCH call returns.
const sourceBatch = 4096

// Sources calls fn for every source the kernel tracks now. The map is read
// in batches (one system call per 4096 sources, not two per source).
func (p *Probe) Sources(clock *event.Clock, fn func(*SourceTotals) error) error {
	m := p.coll.Maps["sources"]
	keys := make([]cttraceSrcKey, sourceBatch)
	vals := make([]cttraceSrcStats, sourceBatch)
	var cursor ebpf.MapBatchCursor
	var st SourceTotals
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := 0; i < n; i++ {
			p.decodeSource(&keys[i], &vals[i], clock, &st)
			if err := fn(&st); err != nil {
				return err
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read sources: %w", err)
		}
	}
}

func (p *Probe) decodeSource(k *cttraceSrcKey, v *cttraceSrcStats, clock *event.Clock, st *SourceTotals) {
	var addr netip.Addr
	bits := int(p.sources.V6Bits)
	if k.Family == 2 {
		addr = netip.AddrFrom4([4]byte(k.Addr[:4]))
		bits = int(p.sources.V4Bits)
	} else {
		addr = netip.AddrFrom16(k.Addr)
	}
	*st = SourceTotals{Netns: k.Netns, Events: v.Events}
	st.Prefix, _ = addr.Prefix(bits)
	if v.LastDropNs != 0 {
		st.LastDrop = clock.Wall(v.LastDropNs)
		st.LastDropReason = event.ReasonFromKernel(v.LastDropType)
	}
}

// NamespaceTotals returns, per network namespace, the events the kernel
// counted since attach, by reason (with SourceOptions.Enabled).
func (p *Probe) NamespaceTotals() (map[uint32]map[event.Reason]uint64, error) {
	out := map[uint32]map[event.Reason]uint64{}
	var netns uint32
	var perCPU []cttraceNetnsStats
	it := p.coll.Maps["netns_totals"].Iterate()
	for it.Next(&netns, &perCPU) {
		m := map[event.Reason]uint64{}
		for _, st := range perCPU {
			for t, n := range st.Events {
				if r := event.ReasonFromKernel(uint32(t)); r.Valid() {
					m[r] += n
				}
			}
		}
		out[netns] = m
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read namespace totals: %w", err)
	}
	return out, nil
}

// Admission is how the kernel's sources map took in new sources: events
// for a source it did not hold (Missed), and sources it admitted.
type Admission struct {
	Missed, Admitted uint64
}

// SourceAdmission reads the admission counters, summed over CPUs.
func (p *Probe) SourceAdmission() (Admission, error) {
	var a Admission
	for i, dst := range map[cttraceSrcStat]*uint64{cttraceSrcStatSRC_MISSED: &a.Missed, cttraceSrcStatSRC_ADMITTED: &a.Admitted} {
		var perCPU []uint64
		if err := p.coll.Maps["source_stats"].Lookup(uint32(i), &perCPU); err != nil {
			return a, fmt.Errorf("read source admission: %w", err)
		}
		*dst = sum(perCPU)
	}
	return a, nil
}

// SetAdmitShift makes the kernel admit a source it does not hold with
// probability 2^-shift (sample and hold, bpf/cttrace.bpf.c); 0 admits all.
func (p *Probe) SetAdmitShift(shift uint32) error {
	if err := p.coll.Variables["admit_shift"].Set(shift); err != nil {
		return fmt.Errorf("set source sampling: %w", err)
	}
	return nil
}

// Sampler keeps the kernel's sources map from churning under a spoofed
// flood, by choosing the admission shift from the rate at which sources it
// does not hold show up. The target: at most an eighth of the map's
// capacity admitted per second, so that a source stays in the map at least
// about eight seconds after its last event, and so is read by user space
// (every interval, at most a second) before it can be pushed out. It
// raises the shift at once when the rate demands, and lowers it one step
// per call, so that a pausing flood does not make it flap.
type Sampler struct {
	p        *Probe
	capacity float64
	shift    uint32
	sampled  bool
	last     Admission
	lastAt   time.Time
}

// MaxAdmitShift is the sparsest sampling: 1 source in 65536. Past it a
// flood would need 500 million new sources a second to churn a map of
// 65536 in eight seconds.
const MaxAdmitShift = 16

// NewSampler starts with every source admitted (exact counts).
func (p *Probe) NewSampler() (*Sampler, error) {
	capacity := p.coll.Maps["sources"].MaxEntries()
	a, err := p.SourceAdmission()
	if err != nil {
		return nil, err
	}
	return &Sampler{p: p, capacity: float64(capacity), last: a, lastAt: time.Now()}, nil
}

// Shift is the admission shift in force: new sources are admitted 1 in 2^Shift.
func (s *Sampler) Shift() uint32 { return s.shift }

// Sampled reports whether sampling was ever in force: some sources were
// then counted only in the totals, and per-source counts are bounded.
func (s *Sampler) Sampled() bool { return s.sampled }

// Adjust reads the admission counters and sets the shift for the rate of
// unheld sources since the last call. Call it often (every 100 ms): it is
// two per-CPU counter reads.
func (s *Sampler) Adjust(now time.Time) error {
	a, err := s.p.SourceAdmission()
	if err != nil {
		return err
	}
	elapsed := now.Sub(s.lastAt).Seconds()
	if elapsed <= 0 {
		return nil
	}
	missedPerSec := float64(a.Missed-s.last.Missed) / elapsed
	s.last, s.lastAt = a, now
	want := admitShiftFor(missedPerSec, s.capacity)
	if want < s.shift {
		want = s.shift - 1
	}
	if want == s.shift {
		return nil
	}
	if err := s.p.SetAdmitShift(want); err != nil {
		return err
	}
	s.shift = want
	s.sampled = s.sampled || want > 0
	return nil
}

// admitShiftFor is the smallest shift that admits at most capacity/8
// sources a second when missed events a second are for unheld sources.
func admitShiftFor(missedPerSec, capacity float64) uint32 {
	var shift uint32
	for missedPerSec/float64(uint64(1)<<shift) > capacity/8 && shift < MaxAdmitShift {
		shift++
	}
	return shift
}
