package probe

import (
	"fmt"
	"net/netip"
	"runtime"
	"time"

	"github.com/cttrace/cttrace/pkg/event"
)

// StreamOptions bound what crosses the ring buffer (bpf/stream.bpf.h,
// "the bounded stream").
type StreamOptions struct {
	// Limit is how many events a second are streamed one by one, shared
	// evenly by the CPUs; past it, events are counted per source and read
	// with Aggregated. 0 streams every event.
	Limit uint32
	// Netns, when not empty, streams and aggregates only these namespaces'
	// events (they are counted in every total whatever it says).
	Netns []uint32
}

// perCPU is each CPU's share of the limit, rounded up so that a small
// limit is not rounded to nothing.
func (o StreamOptions) perCPU() uint32 {
	if o.Limit == 0 {
		return 0
	}
	cpus := uint32(max(runtime.NumCPU(), 1))
	return (o.Limit + cpus - 1) / cpus
}

// selectNamespaces fills the loaded program's namespace filter.
func (p *Probe) selectNamespaces(netns []uint32) error {
	for _, ns := range netns {
		if err := p.objs.StreamNetns.Put(ns, uint8(1)); err != nil {
			return fmt.Errorf("select namespace %d: %w", ns, err)
		}
	}
	return nil
}

// AggregatedCount is what the kernel counted, past the stream limit, for
// one source and reason in one namespace since attach.
type AggregatedCount struct {
	Netns  event.Netns
	Source netip.Addr
	Reason event.Reason
	Count  uint64
	Last   time.Time
}

// Aggregated calls fn for every (namespace, source, reason) the kernel's
// aggregated map holds now, read in batches.
func (p *Probe) Aggregated(clock *event.Clock, fn func(*AggregatedCount) error) error {
	var a AggregatedCount
	err := eachEntry(p.objs.Aggregated, func(k *cttraceAggKey, v *cttraceAggValue) error {
		if p.ns.isForgotten(k.NetnsId) {
			return nil
		}
		p.decodeAggregated(k, v, clock, &a)
		return fn(&a)
	})
	if err != nil {
		return err
	}
	return p.grantRoom(AggregatedMap)
}

// DropAggregated removes entries of the aggregated map that counted
// nothing lately (their Count and Last are not used), as DropSources does
// for the sources map; last gets each one's count as it was removed,
// where the kernel can say.
func (p *Probe) DropAggregated(idle []AggregatedCount, clock *event.Clock, last func(*AggregatedCount)) error {
	if len(idle) == 0 {
		return nil
	}
	keys := make([]cttraceAggKey, 0, len(idle))
	for _, c := range idle {
		k := cttraceAggKey{NetnsId: c.Netns.ID, Type: uint8(c.Reason.KernelType())}
		k.Family, k.Addr = encodeAddr(c.Source)
		keys = append(keys, k)
	}
	var a AggregatedCount
	return removeKeys(p.objs.Aggregated, p.removesExactly, keys, func(k *cttraceAggKey, v *cttraceAggValue) {
		p.decodeAggregated(k, v, clock, &a)
		last(&a)
	})
}

func (p *Probe) decodeAggregated(k *cttraceAggKey, v *cttraceAggValue, clock *event.Clock, a *AggregatedCount) {
	*a = AggregatedCount{Netns: event.Netns{ID: k.NetnsId, Inode: v.Inum}, Reason: event.ReasonFromKernel(uint32(k.Type)), Count: v.Count, Last: clock.Wall(v.LastNs)}
	if k.Family == 2 {
		a.Source = netip.AddrFrom4([4]byte(k.Addr[:4]))
	} else {
		a.Source = netip.AddrFrom16(k.Addr)
	}
}

// AggregatedTotals returns, by reason, every event counted past the stream
// limit since attach, whether or not the map could hold its source.
func (p *Probe) AggregatedTotals() (event.Counts, error) {
	var out event.Counts
	for t := uint32(1); t < uint32(len(out)); t++ {
		var perCPU []uint64
		if err := p.objs.AggregatedTotal.Lookup(t, &perCPU); err != nil {
			return out, fmt.Errorf("read aggregated totals: %w", err)
		}
		out[t] = sum(perCPU)
	}
	return out, nil
}
