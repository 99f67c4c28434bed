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
	var st cttraceNetnsStats
	it := p.coll.Maps["netns_totals"].Iterate()
	for it.Next(&netns, &st) {
		m := map[event.Reason]uint64{}
		for t, n := range st.Events {
			if r := event.ReasonFromKernel(uint32(t)); r.Valid() {
				m[r] = n
			}
		}
		out[netns] = m
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read namespace totals: %w", err)
	}
	return out, nil
}
