package probe

import (
	"errors"
	"fmt"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"

	"github.com/cttrace/cttrace/pkg/event"
)

// SourceOptions turns on per-source counting in the kernel, for
// top-sources. The map is LRU and holds at most Max sources, so a flood of
// spoofed addresses cannot grow it.
type SourceOptions struct {
	Enabled bool
	// NamespacesOnly counts per namespace, not per source: the kernel side
	// then skips every source's lookup (serve --metrics-top 0).
	NamespacesOnly bool
	Max            uint32 // sources tracked in the kernel (0: the object's 65536)
	V4Bits         uint8  // group IPv4 sources by this prefix length (0: 32)
	V6Bits         uint8  // group IPv6 sources by this prefix length (0: 128)
	// ReadEvery is how often user space reads the map (0: every second):
	// the map's Sampler keeps a source in it for four reads after its
	// last event.
	ReadEvery time.Duration
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

// batchSize is how many entries one BPF_MAP_LOOKUP_BATCH call returns.
const batchSize = 4096

// eachEntry calls fn for every entry of a hash map, read in batches: one
// system call per 4096 entries, not two per entry.
func eachEntry[K, V any](m *ebpf.Map, fn func(*K, *V) error) error {
	keys := make([]K, batchSize)
	vals := make([]V, batchSize)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := 0; i < n; i++ {
			if err := fn(&keys[i], &vals[i]); err != nil {
				return err
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", m, err)
		}
	}
}

// Sources calls fn for every source the kernel tracks now.
func (p *Probe) Sources(clock *event.Clock, fn func(*event.SourceCounts) error) error {
	var st event.SourceCounts
	err := eachEntry(p.objs.Sources, func(k *cttraceSrcKey, v *cttraceSrcStats) error {
		if p.ns.isForgotten(k.NetnsId) {
			return nil
		}
		p.decodeSource(k, v, clock, &st)
		return fn(&st)
	})
	if err != nil {
		return err
	}
	return p.grantRoom(SourcesMap)
}

// DropSources removes sources from the kernel's map: ones user space has
// read and that counted nothing lately. Their counts are user space's now;
// a source that comes back starts a new entry from zero. Without this a
// spoofed flood would leave the map full of sources that counted once,
// every one of them read and kept in user space at every read.
//
// A refusal can land between the read and the removal. Where the kernel
// returns an entry as it deletes it (canRemoveExactly), last gets each
// removed source's counts at that moment, so those refusals still go to
// their source. Elsewhere they are counted only in their namespace's
// totals.
func (p *Probe) DropSources(keys []event.SourceKey, clock *event.Clock, last func(*event.SourceCounts)) error {
	if len(keys) == 0 {
		return nil
	}
	kk := make([]cttraceSrcKey, 0, len(keys))
	for _, k := range keys {
		kk = append(kk, p.encodeSource(k))
	}
	var st event.SourceCounts
	return removeKeys(p.objs.Sources, p.removesExactly, kk, func(k *cttraceSrcKey, v *cttraceSrcStats) {
		p.decodeSource(k, v, clock, &st)
		last(&st)
	})
}

// canRemoveExactly says whether the kernel can look up and delete one
// entry of a hash map in one step: BPF_MAP_LOOKUP_AND_DELETE_ELEM took
// hash maps in 5.14 (commit 3e87f192b405, "bpf: Add support for
// lookup_and_delete_elem for hash maps"); before, it answers ENOTSUPP. It
// asks once, on the empty map at load, for a key no source has.
func canRemoveExactly(m *ebpf.Map) bool {
	var (
		k cttraceSrcKey
		v cttraceSrcStats
	)
	return errors.Is(m.LookupAndDelete(&k, &v), ebpf.ErrKeyNotExist)
}

// removeKeys deletes keys from a hash map and, where the kernel allows,
// calls last with each one's value as it was deleted. Else it deletes in
// batches (BPF_MAP_DELETE_BATCH, 5.6); a key already gone (pushed out
// meanwhile) ends a batch early, so the rest are deleted one by one.
func removeKeys[K, V any](m *ebpf.Map, exact bool, keys []K, last func(*K, *V)) error {
	if exact {
		var v V
		for i := range keys {
			err := m.LookupAndDelete(&keys[i], &v)
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				continue
			}
			if err != nil {
				return fmt.Errorf("drop idle entries of %s: %w", m, err)
			}
			last(&keys[i], &v)
		}
		return nil
	}
	n, err := m.BatchDelete(keys, nil)
	if err == nil {
		return nil
	}
	if !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("drop idle entries of %s: %w", m, err)
	}
	for i := n; i < len(keys); i++ {
		if err := m.Delete(&keys[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("drop idle entries of %s: %w", m, err)
		}
	}
	return nil
}

// encodeSource is the map's key for a source decodeSource read.
func (p *Probe) encodeSource(k event.SourceKey) cttraceSrcKey {
	key := cttraceSrcKey{NetnsId: k.Netns.ID}
	key.Family, key.Addr = encodeAddr(k.Prefix.Addr())
	return key
}

// encodeAddr is an address as the kernel side keeps it: its family
// (NFPROTO_IPV4 or NFPROTO_IPV6) and 16 bytes, IPv4 in the first four.
func encodeAddr(a netip.Addr) (family uint8, addr [16]byte) {
	if a.Is4() {
		a4 := a.As4()
		copy(addr[:], a4[:])
		return 2, addr
	}
	return 10, a.As16()
}

func (p *Probe) decodeSource(k *cttraceSrcKey, v *cttraceSrcStats, clock *event.Clock, st *event.SourceCounts) {
	var addr netip.Addr
	bits := int(p.sources.V6Bits)
	if k.Family == 2 {
		addr = netip.AddrFrom4([4]byte(k.Addr[:4]))
		bits = int(p.sources.V4Bits)
	} else {
		addr = netip.AddrFrom16(k.Addr)
	}
	*st = event.SourceCounts{Netns: event.Netns{ID: k.NetnsId, Inode: v.Inum}, Events: event.CountsFromKernel(v.Events)}
	st.Prefix, _ = addr.Prefix(bits)
	if v.LastDropNs != 0 {
		st.LastDrop = clock.Wall(v.LastDropNs)
		st.LastDropReason = event.ReasonFromKernel(v.LastDropType)
	}
}

// Admission is how one of the kernel's bounded maps took in new keys:
// events for a key it did not hold (Missed), and keys admitted; and the
// refusals its sketch held back and those it credited to their source once
// it passed the threshold.
type Admission struct {
	Missed, Admitted   uint64
	HeldBack, Credited uint64
}

// Uncounted says whether some refusals the sketch held back were never
// credited: they are only in their namespace's totals. (A credit can also
// carry collisions, so this misses a loss as large as those.)
func (a Admission) Uncounted() bool { return a.HeldBack > a.Credited }

// SampledMap is a map that admits refusals' keys through the sketch and
// other new keys by sample and hold: the map, the variable holding its
// shift, and its admission counters.
type SampledMap struct {
	name string
	of   func(*loadedObjects) (*ebpf.Map, *ebpf.Variable)
	// room is the variable of the new sources the kernel may take in
	// freely (grantRoom).
	room             func(*loadedObjects) *ebpf.Variable
	missed, admitted cttraceSrcStat
	// Refusals reach the map through the sketch (bpf/sketch.bpf.h).
	heldBack, credited cttraceSrcStat
}

var (
	// SourcesMap is the per-source map of top-sources.
	SourcesMap = SampledMap{"sources", func(o *loadedObjects) (*ebpf.Map, *ebpf.Variable) { return o.Sources, o.AdmitShift },
		func(o *loadedObjects) *ebpf.Variable { return o.SourcesRoom },
		cttraceSrcStatSRC_MISSED, cttraceSrcStatSRC_ADMITTED, cttraceSrcStatSRC_HELD_BACK, cttraceSrcStatSRC_CREDITED}
	// AggregatedMap holds the per-source counts past the stream limit.
	AggregatedMap = SampledMap{"aggregated", func(o *loadedObjects) (*ebpf.Map, *ebpf.Variable) { return o.Aggregated, o.AggAdmitShift },
		func(o *loadedObjects) *ebpf.Variable { return o.AggregatedRoom },
		cttraceSrcStatAGG_MISSED, cttraceSrcStatAGG_ADMITTED, cttraceSrcStatAGG_HELD_BACK, cttraceSrcStatAGG_CREDITED}
)

func (p *Probe) admission(at SampledMap) (Admission, error) {
	var a Admission
	read := map[cttraceSrcStat]*uint64{at.missed: &a.Missed, at.admitted: &a.Admitted, at.heldBack: &a.HeldBack, at.credited: &a.Credited}
	for i, dst := range read {
		var perCPU []uint64
		if err := p.objs.SourceStats.Lookup(uint32(i), &perCPU); err != nil {
			return a, fmt.Errorf("read %s admission: %w", at.name, err)
		}
		*dst = sum(perCPU)
	}
	return a, nil
}

// grantRoom tells the kernel how many new sources the map may take in
// freely now that user space has read all of it: a sixteenth of its size.
// New sources push out the least recently used entries first, which were
// just read and have not counted since, so nothing unread is lost; a
// thousand-source flood is counted exactly from its first refusals (4,096
// new sources a read at the default size); and a flood of spoofed sources
// costs the kernel side an insert for a sixteenth of the map a read, not
// one for each of its packets, and user space a copy of no more. Past the
// room the kernel holds new sources back and admits only heavy ones
// (bpf/sketch.bpf.h).
func (p *Probe) grantRoom(at SampledMap) error {
	m, _ := at.of(&p.objs)
	if err := at.room(&p.objs).Set(roomOf(m.MaxEntries())); err != nil {
		return fmt.Errorf("grant %s room: %w", at.name, err)
	}
	return nil
}

// roomOf is the room a map of that capacity is granted at each read.
func roomOf(capacity uint32) int64 { return int64(max(capacity/16, 1)) }

// setShift makes the kernel admit a key the map does not hold with
// probability 2^-shift (sample and hold, bpf/accounting.bpf.h).
func (p *Probe) setShift(at SampledMap, shift uint32) error {
	_, v := at.of(&p.objs)
	if err := v.Set(shift); err != nil {
		return fmt.Errorf("set %s sampling: %w", at.name, err)
	}
	return nil
}

// Sampler keeps one of the kernel's bounded maps from churning under a
// spoofed flood, by choosing its admission shift from the rate at which
// keys it does not hold show up. The target: a key stays in the map at
// least four of user space's reads after its last event, so it is read
// before it can be pushed out; that is, at most capacity / (4 × the read
// period) keys admitted a second. It raises the shift at once when the
// rate demands, and lowers it one step per call, so that a pausing flood
// does not make it flap.
type Sampler struct {
	p      *Probe
	at     SampledMap
	perSec float64 // admissions a second the map can take
	// shift and sampled are read by the map's readers while Adjust, on
	// the session's maintenance goroutine, changes them.
	shift   atomic.Uint32
	sampled atomic.Bool
	last    Admission
	lastAt  time.Time
}

// MaxAdmitShift is the sparsest sampling: 1 key in 65536. Past it a flood
// would need a billion new sources a second to churn a map of 65536 in
// four seconds.
const MaxAdmitShift = 16

// readsBeforeEviction is how many reads a key outlives its last event by,
// at least, while the sampler keeps up.
const readsBeforeEviction = 4

// NewSampler starts with every key admitted (exact counts). at is
// SourcesMap or AggregatedMap; readEvery is how often user space reads it.
func (p *Probe) NewSampler(at SampledMap, readEvery time.Duration) (*Sampler, error) {
	m, _ := at.of(&p.objs)
	capacity := float64(m.MaxEntries())
	a, err := p.admission(at)
	if err != nil {
		return nil, err
	}
	perSec := capacity / (readsBeforeEviction * max(readEvery.Seconds(), 0.001))
	return &Sampler{p: p, at: at, perSec: perSec, last: a, lastAt: time.Now()}, nil
}

// Shift is the admission shift in force: new keys are admitted 1 in 2^Shift.
func (s *Sampler) Shift() uint32 { return s.shift.Load() }

// Sampled reports whether sampling was ever in force, or the sketch held
// back refusals it did not credit: some keys' events were then counted
// only in the totals, and per-key counts are bounded.
func (s *Sampler) Sampled() bool { return s.sampled.Load() }

// Adjust reads the admission counters and sets the shift for the rate of
// unheld keys since the last call. Call it often (every 100 ms): it is two
// per-CPU counter reads.
func (s *Sampler) Adjust(now time.Time) error {
	a, err := s.p.admission(s.at)
	if err != nil {
		return err
	}
	if a.Uncounted() {
		s.sampled.Store(true)
	}
	elapsed := now.Sub(s.lastAt).Seconds()
	if elapsed <= 0 {
		return nil
	}
	missedPerSec := float64(a.Missed-s.last.Missed) / elapsed
	s.last, s.lastAt = a, now
	want := admitShiftFor(missedPerSec, s.perSec)
	shift := s.shift.Load()
	if want < shift {
		want = shift - 1
	}
	if want == shift {
		return nil
	}
	if err := s.p.setShift(s.at, want); err != nil {
		return err
	}
	s.shift.Store(want)
	if want > 0 {
		s.sampled.Store(true)
	}
	return nil
}

// admitShiftFor is the smallest shift that admits at most perSec keys a
// second when missedPerSec events a second are for keys not held.
func admitShiftFor(missedPerSec, perSec float64) uint32 {
	var shift uint32
	for missedPerSec/float64(uint64(1)<<shift) > perSec && shift < MaxAdmitShift {
		shift++
	}
	return shift
}
