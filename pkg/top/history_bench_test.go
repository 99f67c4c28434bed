package top

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"testing"
	"time"
	"unsafe"

	"github.com/cttrace/cttrace/pkg/event"
)

// floodSource is source number n of a flood: distinct n, distinct address.
func floodSource(n uint32) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{byte(1 + n>>24%200), byte(n >> 16), byte(n >> 8), byte(n)}), 40000)
}

// benchReasons is a flood's mix: mostly refusals, some inserts, and the
// deletes and evictions that follow them.
var benchReasons = [...]event.Reason{
	event.ReasonTableFull, event.ReasonTableFull, event.ReasonTableFull,
	event.ReasonTableFull, event.ReasonTableFull, event.ReasonInsertFailed,
	event.ReasonInsert, event.ReasonInsert, event.ReasonDelete, event.ReasonEarlyDrop,
}

// BenchmarkAdd measures one event's cost at the default capacity as the
// number of distinct sources grows past it: from every event hitting one
// row to nearly every event displacing one.
func BenchmarkAdd(b *testing.B) {
	for _, distinct := range []int{1, 100, 10_000, 1_000_000} {
		b.Run(fmt.Sprintf("sources=%d", distinct), func(b *testing.B) {
			tr := newHistory(b, HistoryCapacity, Grouping{})
			// The sources are drawn at random, so the index and the rows
			// are visited as a flood visits them, not in order.
			rng := rand.New(rand.NewPCG(1, uint64(distinct)))
			picks := make([]uint32, 1<<22)
			for i := range picks {
				picks[i] = rng.Uint32N(uint32(distinct))
			}
			ev := flowFrom(event.ReasonTableFull, testNetns, netip.MustParseAddr("10.0.0.1"))
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				ev.Flow.Src = floodSource(picks[i&(len(picks)-1)])
				ev.Reason = benchReasons[i%len(benchReasons)]
				add(tr, ev)
				i++
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
			b.ReportMetric(float64(tr.evictions)/float64(b.N), "evictions/op")
		})
	}
}

// BenchmarkRead measures one reading of the history at the default
// capacity, full (every row returned, as Ranking reads it).
func BenchmarkRead(b *testing.B) {
	tr := newHistory(b, HistoryCapacity, Grouping{})
	rng := rand.New(rand.NewPCG(2, 2))
	ev := flowFrom(event.ReasonTableFull, testNetns, netip.MustParseAddr("10.0.0.1"))
	for i := range 200_000 {
		ev.Flow.Src = floodSource(rng.Uint32N(50_000))
		ev.Reason = benchReasons[i%len(benchReasons)]
		add(tr, ev)
	}
	b.ReportAllocs()
	for b.Loop() {
		tr.Read()
	}
}

// TestMemoryBound measures the heap a full history holds after a flood
// that displaced many times its capacity, and checks it against
// MemoryBound, the figure doc.go documents.
func TestMemoryBound(t *testing.T) {
	t.Logf("a row %d bytes (key %d, counts now and at the last read %d, last drop %d), heap 4, freed rows 4, index slot %d, History %d",
		unsafe.Sizeof(tracked{}), unsafe.Sizeof(Key{}), 2*unsafe.Sizeof(Counts{}),
		unsafe.Sizeof(event.Reason(""))+unsafe.Sizeof(time.Time{}), unsafe.Sizeof(slot{}), unsafe.Sizeof(History{}))
	for _, capacity := range []int{HistoryCapacity, 100_000} {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		tr := newHistory(t, capacity, Grouping{})
		ev := flowFrom(event.ReasonTableFull, testNetns, netip.MustParseAddr("10.0.0.1"))
		for i := range uint32(4 * capacity) {
			ev.Flow.Src = floodSource(i)
			ev.Reason = benchReasons[i%uint32(len(benchReasons))]
			add(tr, ev)
		}
		// The namespace dies with every row; a second one floods the rows
		// Forget freed, and past them.
		tr.Forget(func(k Key) bool { return k.Netns == event.NetnsOf(testNetns) })
		if len(tr.gone) != capacity {
			t.Fatalf("capacity %d: Forget freed %d rows", capacity, len(tr.gone))
		}
		ev.Netns = event.NetnsOf(testNetns + 1)
		for i := range uint32(2 * capacity) {
			ev.Flow.Src = floodSource(i)
			ev.Reason = benchReasons[i%uint32(len(benchReasons))]
			add(tr, ev)
		}
		if len(tr.gone) != 0 {
			t.Errorf("capacity %d: %d freed rows left after the second flood", capacity, len(tr.gone))
		}
		tr.Read() // the scratch at its largest; the rows are garbage
		runtime.GC()
		runtime.ReadMemStats(&after)
		used := int64(after.HeapAlloc) - int64(before.HeapAlloc)
		runtime.KeepAlive(tr)
		bound := MemoryBound(capacity)
		t.Logf("capacity %d: %d bytes on the heap, %.0f per tracked source (bound %d, %.0f per source)",
			capacity, used, float64(used)/float64(capacity), bound, float64(bound)/float64(capacity))
		if tr.evictions == 0 {
			t.Errorf("capacity %d: no eviction, the flood did not test the bound", capacity)
		}
		// The slack is for what the runtime and the testing package allocate
		// meanwhile.
		if slack := int64(16 << 10); used > int64(bound)+slack {
			t.Errorf("capacity %d: %d bytes on the heap, over the bound %d", capacity, used, bound)
		}
	}
}
