//go:build privileged

package session

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cttrace/cttrace/internal/ctlab"
	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/probe"
)

// These tests hold the kernel side's per-namespace counts, by reason and by
// detail, to the kernel's own counters when events are only counted
// (per-source counting on, nothing streamed: what serve and top-sources
// run). Such an event is not zeroed the way a streamed one is, and every
// field the accounting reads must still have been written: a detail read
// from an uninitialised event once made serve report evictions (gc_evict,
// delete/other, early_drop) for floods in which the kernel evicted nothing.

// counted is one namespace's counts, by reason and by detail.
type counted struct {
	reasons map[event.Reason]uint64
	details map[event.Detail]uint64
}

func (c counted) String() string {
	var b strings.Builder
	for _, r := range event.Reasons() {
		if n := c.reasons[r]; n != 0 {
			fmt.Fprintf(&b, " %s=%d", r, n)
		}
	}
	for _, d := range event.Details()[1:] {
		if n := c.details[d]; n != 0 {
			fmt.Fprintf(&b, " %s/%s=%d", d.Reason(), d, n)
		}
	}
	if b.Len() == 0 {
		return "nothing"
	}
	return b.String()[1:]
}

// diff lists every reason and detail whose count differs from want's
// (missing means 0), so that a count where none belongs shows as well as
// a wrong one.
func (c counted) diff(want counted) []string {
	var out []string
	for _, r := range event.Reasons() {
		if c.reasons[r] != want.reasons[r] {
			out = append(out, fmt.Sprintf("%s: %d counted, want %d", r, c.reasons[r], want.reasons[r]))
		}
	}
	for _, d := range event.Details()[1:] {
		if c.details[d] != want.details[d] {
			out = append(out, fmt.Sprintf("%s with detail %s: %d counted, want %d", d.Reason(), d, c.details[d], want.details[d]))
		}
	}
	return out
}

// namespaceCounts reads what the kernel side counted for netns.
func namespaceCounts(s *Session, netns uint32) (counted, error) {
	all, err := s.NamespaceCounts()
	if err != nil {
		return counted{}, err
	}
	c := counted{reasons: map[event.Reason]uint64{}, details: map[event.Detail]uint64{}}
	var ns event.NamespaceCounts
	for id, n := range all {
		if id.Inode == netns { // the lab's, the only namespace by that inode the session saw
			ns = n
		}
	}
	for _, r := range event.Reasons() {
		if n := ns.Events.Of(r); n != 0 {
			c.reasons[r] = n
		}
	}
	for _, d := range event.Details()[1:] {
		if n := ns.Details.Of(d); n != 0 {
			c.details[d] = n
		}
	}
	return c, nil
}

// expectCounts polls until the namespace's counts are exactly what want
// returns (which may read the kernel's state again), or 10 s pass, and then
// reports every difference. The counts are kept synchronously by the
// programs, but the kernel's own work (the gc worker) goes on meanwhile.
func expectCounts(t *testing.T, s *Session, netns uint32, want func() (counted, error)) counted {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		w, err := want()
		if err != nil {
			t.Fatal(err)
		}
		got, err := namespaceCounts(s, netns)
		if err != nil {
			t.Fatal(err)
		}
		diff := got.diff(w)
		if len(diff) == 0 {
			return got
		}
		if time.Now().After(deadline) {
			t.Errorf("kernel side counted %v; want %v:\n\t%s", got, w, strings.Join(diff, "\n\t"))
			return got
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// countOnly traces with per-source counting on and nothing streamed, as
// serve does.
func countOnly(t *testing.T, b probe.Backend, lab *ctlab.Lab) (*Session, func()) {
	t.Helper()
	_, s, stop := traceWith(t, Config{Backend: b, Sources: probe.SourceOptions{Enabled: true}}, lab.Inode())
	return s, stop
}

// A table held full by ASSURED connections refuses a flood of spoofed new
// flows (early_drop finds nothing to evict, nor does the gc worker), then a
// ctnetlink flush empties it: the namespace counts the refusals as
// table_full and the flushed entries as netlink deletes, and nothing else,
// no detail included.
func TestCountedRefusalsAndFlushCarryOnlyTheirDetails(t *testing.T) {
	usableBackends(t, func(t *testing.T, b probe.Backend) {
		const max = 64
		lab := ctlab.New(t)
		ctlab.SetMax(t, max)
		if err := lab.HoldEstablished(max); err != nil {
			t.Fatalf("fill the table: %v", err)
		}
		s, stop := countOnly(t, b, lab)
		before := stats(t, lab)

		n := scale(20000)
		res, err := lab.Flood(ctlab.FloodSpec{Random: true, Packets: n})
		if err != nil {
			t.Fatal(err)
		}
		if res.Sent != 0 || res.Refused != n {
			t.Fatalf("%d flows got through and %d were refused, want all %d refused (table not full?)", res.Sent, res.Refused, n)
		}
		full := stats(t, lab)
		if err := lab.Flush(30 * time.Second); err != nil {
			t.Fatal(err)
		}
		delta := stats(t, lab).Sub(before)
		flushed := full.Entries
		t.Logf("%s: %d spoofed flows refused in %v; kernel %v; %d entries flushed", b, res.Refused, res.Elapsed, delta, flushed)
		if int(delta.Drop) != n || delta.EarlyDrop != 0 || full.Entries != max {
			t.Fatalf("test bed off: kernel drop delta %d (want %d), early_drop delta %d (want 0), %d entries (want %d)",
				delta.Drop, n, delta.EarlyDrop, full.Entries, max)
		}

		want := counted{
			reasons: map[event.Reason]uint64{event.ReasonTableFull: uint64(delta.Drop), event.ReasonEarlyDrop: uint64(delta.EarlyDrop)},
			details: map[event.Detail]uint64{},
		}
		if b != probe.BackendTracepoint { // which sees only freed packets
			want.reasons[event.ReasonDelete] = uint64(flushed)
			want.details[event.DetailNetlink] = uint64(flushed)
		}
		got := expectCounts(t, s, lab.Inode(), func() (counted, error) { return want, nil })
		stop()
		t.Logf("%s: counted %v", b, got)
	})
}

// A table at half its max of ASSURED entries takes three times as many new
// flows from three sources, as fast as they go: the first fill the table,
// then each new flow either evicts an unassured one (early_drop) or, when
// early_drop finds none near its bucket, is refused (table_full). The
// namespace's table_full count is the kernel's drop counter and its
// early_drop count, all with detail evicted_for_new_flow, the kernel's
// early_drop counter, exactly; every admitted flow is an insert; the gc
// worker's evictions (the kernel counts them nowhere) are what the table's
// entry count says left it otherwise; and no other reason or detail is
// counted.
func TestCountedEvictionsMatchKernelEarlyDrops(t *testing.T) {
	usableBackends(t, func(t *testing.T, b probe.Backend) {
		max := scale(2048)
		held := max / 2
		lab := ctlab.New(t)
		ctlab.SetMax(t, max)
		if err := lab.HoldEstablished(held); err != nil {
			t.Fatalf("fill half the table: %v", err)
		}
		s, stop := countOnly(t, b, lab)
		before := stats(t, lab)

		srcs := []netip.Addr{netip.MustParseAddr("127.70.0.1"), netip.MustParseAddr("127.70.0.2"), netip.MustParseAddr("127.70.0.3")}
		flows := 3 * held
		start := time.Now()
		sent, refused, err := lab.RawFlood(srcs, netip.MustParseAddrPort("127.0.0.1:9"), flows)
		if err != nil {
			t.Fatal(err)
		}
		elapsed := time.Since(start)
		delta := stats(t, lab).Sub(before)
		t.Logf("%s: %d flows in %v, %d admitted, %d refused; kernel %v", b, flows, elapsed, sent, refused, delta)
		if int(delta.Drop) != refused || delta.InsertFailed != 0 || delta.Drop == 0 || delta.EarlyDrop == 0 {
			t.Fatalf("test bed off: kernel drop delta %d for %d refused, insert_failed %d, early_drop %d (want both refusals and evictions)",
				delta.Drop, refused, delta.InsertFailed, delta.EarlyDrop)
		}

		want := func() (counted, error) {
			now, err := lab.Stats()
			if err != nil {
				return counted{}, err
			}
			d := now.Sub(before)
			w := counted{
				reasons: map[event.Reason]uint64{event.ReasonTableFull: uint64(d.Drop)},
				details: map[event.Detail]uint64{},
			}
			if b == probe.BackendTracepoint { // which sees only freed packets
				return w, nil
			}
			// Entries leave only by eviction here (the lab's UDP timeout
			// is an hour): what early_drop did not evict, the gc worker did.
			gc := before.Entries + int64(sent) - d.EarlyDrop - now.Entries
			w.reasons[event.ReasonEarlyDrop] = uint64(d.EarlyDrop)
			w.details[event.DetailEvictedForNewFlow] = uint64(d.EarlyDrop)
			w.reasons[event.ReasonGCEvict] = uint64(gc)
			w.details[event.DetailEvictedByGC] = uint64(gc)
			w.reasons[event.ReasonInsert] = uint64(sent)
			return w, nil
		}
		got := expectCounts(t, s, lab.Inode(), want)
		stop()
		t.Logf("%s: counted %v", b, got)
		if slices.Contains([]probe.Backend{probe.BackendFentry, probe.BackendKprobe}, b) && got.reasons[event.ReasonEarlyDrop] == 0 {
			t.Errorf("%s counted no eviction", b)
		}
	})
}
