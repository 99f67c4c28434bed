package metrics

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/table"
	"github.com/cttrace/cttrace/pkg/top"
)

// fakeKernel is a session's kernel side as the exporter reads it: its
// per-namespace counts and per-source map, keyed by identity, leaving out
// the namespaces it was told are dead, as probe.Probe does, unless keeps
// (a kernel side that still shows them: read must not count on Forget).
type fakeKernel struct {
	counts    map[event.Netns]event.NamespaceCounts
	sources   []event.SourceCounts
	forgotten []event.Netns
	keeps     bool
}

func (k *fakeKernel) hides(ns event.Netns) bool { return !k.keeps && slices.Contains(k.forgotten, ns) }

func (k *fakeKernel) Sources(fn func(*event.SourceCounts) error) error {
	for i := range k.sources {
		if s := k.sources[i]; !k.hides(s.Netns) {
			if err := fn(&s); err != nil {
				return err
			}
		}
	}
	return nil
}

func (k *fakeKernel) NamespaceCounts() (map[event.Netns]event.NamespaceCounts, error) {
	out := maps.Clone(k.counts)
	maps.DeleteFunc(out, func(ns event.Netns, _ event.NamespaceCounts) bool { return k.hides(ns) })
	return out, nil
}

func (k *fakeKernel) Backend() string                { return "fentry" }
func (k *fakeKernel) Sees(event.Reason) bool         { return true }
func (k *fakeKernel) SourceSampling() (uint32, bool) { return 0, false }
func (k *fakeKernel) Lost() (uint64, error)          { return 0, nil }
func (k *fakeKernel) Forget(dead []event.Netns) error {
	k.forgotten = append(k.forgotten, dead...)
	return nil
}

// add gives the kernel a namespace of drops table_full drops, all of them
// from src.
func (k *fakeKernel) add(ns event.Netns, drops uint64, src string) {
	if k.counts == nil {
		k.counts = map[event.Netns]event.NamespaceCounts{}
	}
	k.counts[ns] = nsCounts(map[event.Reason]uint64{event.ReasonTableFull: drops}, nil)
	var c event.Counts
	c.Add(event.ReasonTableFull, drops)
	k.sources = append(k.sources, event.SourceCounts{Netns: ns, Prefix: netip.MustParsePrefix(src), Events: c})
}

// gatherAll collects every metric of e, failing as a scrape would on a
// series collected twice.
func gatherAll(e *Exporter) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(e)
	_, err := reg.Gather()
	return err
}

// listedNetns is the identity the table reader gives a listed namespace,
// as pkg/top keys it (tables.go, netnsOf): its cookie, or its inode number
// where it has none.
func listedNetns(ns *table.NamespaceStats) event.Netns {
	if ns.Cookie != 0 {
		return event.Netns{ID: ns.Cookie, Inode: ns.Inode}
	}
	return event.NetnsOf(ns.Inode)
}

// Series are labelled netns=<inode>, and the kernel hands a dead
// namespace's inode number to the next at once: a reading that held both
// namespaces would make two series of the same name and labels, which
// fails the whole scrape. The exporter shows what it is given...
func TestTwoNamespacesOfOneInodeFailTheScrape(t *testing.T) {
	e := New("fentry", 3, nil)
	e.Update(&Reading{Namespaces: map[event.Netns]event.NamespaceCounts{
		{ID: 4097, Inode: 7}: nsCounts(map[event.Reason]uint64{event.ReasonTableFull: 3}, nil),
		{ID: 8193, Inode: 7}: nsCounts(map[event.Reason]uint64{event.ReasonTableFull: 1000}, nil),
	}})
	if err := gatherAll(e); err == nil || !strings.Contains(err.Error(), "collected before with the same name and label values") {
		t.Fatalf("two namespaces of inode 7 scraped without a duplicate series: %v", err)
	}
}

// ...so read gives it the living namespaces only. A dead namespace whose
// inode the table reader now lists with another identity is left out at
// once, and one whose inode it does not list at all once the reader missed
// it twice; the dead namespaces are forgotten in the kernel side too, and
// left out whether or not the kernel side still counts them. The initial
// namespace stands for the living: the table reader lists it whatever its
// statistics say.
func TestReadKeepsTheLivingNamespaces(t *testing.T) {
	for _, keeps := range []bool{false, true} {
		t.Run(fmt.Sprintf("kernel keeps the dead %v", keeps), func(t *testing.T) { testReadKeepsTheLiving(t, keeps) })
	}
}

func testReadKeepsTheLiving(t *testing.T, keeps bool) {
	listed, err := table.InUse()
	if err != nil {
		t.Skipf("the network namespaces cannot be listed here (%v): read takes every namespace as alive then", err)
	}
	inodes := map[uint32]bool{}
	for _, ns := range listed {
		inodes[ns.Inode] = true
	}
	alive := listedNetns(&listed[0])
	reborn := event.Netns{ID: alive.ID ^ 1<<62, Inode: alive.Inode} // the dead namespace that had the inode before
	gone := event.Netns{ID: 5, Inode: 1}                            // dead, its inode not reused
	if inodes[gone.Inode] {
		t.Skipf("inode %d is a living namespace's here", gone.Inode)
	}
	k := &fakeKernel{keeps: keeps}
	k.add(alive, 3, "10.0.0.1/32")
	k.add(reborn, 1000, "10.0.0.1/32") // the same address in both: the same labels
	k.add(gone, 40, "10.0.0.2/32")

	o := top.DefaultOptions()
	o.Limit, o.Interval = top.HistoryCapacity, time.Second
	live, err := top.NewLive(k, o, func(what string, err error) { t.Logf("%s: %v", what, err) })
	if err != nil {
		t.Fatal(err)
	}
	e := New("fentry", 3, nil)
	label := fmt.Sprint(alive.Inode)
	for i, want := range []map[event.Netns]uint64{
		{alive: 3, gone: 40}, // gone: missed once, maybe a process caught exiting
		{alive: 3},
	} {
		r, err := read(time.Now(), k, live)
		if err != nil {
			t.Fatal(err)
		}
		got := map[event.Netns]uint64{}
		for ns, c := range r.Namespaces {
			got[ns] = c.Events.Of(event.ReasonTableFull)
		}
		if !maps.Equal(got, want) {
			t.Errorf("read %d: namespaces %v, want %v", i, got, want)
		}
		e.Update(r)
		if err := gatherAll(e); err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
		events := gather(t, e, "cttrace_events_total", "netns", "reason", "detail")
		if n := events[label+" table_full "]; n != 3 {
			t.Errorf("read %d: netns %s has %v table_full, want the living namespace's 3", i, label, n)
		}
		if _, shown := events["1 table_full "]; shown != (i == 0) {
			t.Errorf("read %d: inode 1's series shown %v", i, shown)
		}
		sources := gather(t, e, "cttrace_source_drops_total", "netns", "source")
		if n := sources[label+" 10.0.0.1/32"]; n != 3 {
			t.Errorf("read %d: netns %s source 10.0.0.1/32 at %v drops, want the living namespace's 3", i, label, n)
		}
	}
	if !slices.Contains(k.forgotten, reborn) || !slices.Contains(k.forgotten, gone) || slices.Contains(k.forgotten, alive) {
		t.Errorf("the kernel side was told of %v as dead, want %v and %v", k.forgotten, reborn, gone)
	}
}

// Two namespaces of one inode the table reader does not list, the dead
// one and the one that took its inode (made after the listing, or not
// reachable through /proc and /run/netns): only the newer can live, so the
// older is forgotten at once, the sources make one series per inode and
// source, and the inode's line holds the counts of the namespace it names.
func TestReadUnlistedNamespacesOfOneInode(t *testing.T) {
	listed, err := table.InUse()
	if err != nil {
		t.Skipf("the network namespaces cannot be listed here (%v)", err)
	}
	for _, ns := range listed {
		if ns.Inode == 1 {
			t.Skip("inode 1 is a living namespace's here")
		}
	}
	dead, next := event.Netns{ID: 5, Inode: 1}, event.Netns{ID: 6, Inode: 1}
	k := &fakeKernel{}
	k.add(dead, 1000, "10.0.0.1/32")
	k.add(next, 3, "10.0.0.1/32")
	o := top.DefaultOptions()
	o.Limit, o.Interval = top.HistoryCapacity, time.Second
	live, err := top.NewLive(k, o, func(what string, err error) { t.Logf("%s: %v", what, err) })
	if err != nil {
		t.Fatal(err)
	}
	r, err := read(time.Now(), k, live)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Namespaces) != 1 {
		t.Errorf("namespaces of inode 1 read: %v", slices.Collect(maps.Keys(r.Namespaces)))
	}
	// The line of inode 1 holds one namespace's counts, those of the
	// namespace it names.
	for _, ns := range r.Snapshot.Namespaces {
		if c, ok := r.Namespaces[ns.Netns]; ns.Netns.Inode == 1 && (!ok || c.Events != ns.Total.Events) {
			t.Errorf("the line of %+v holds %d drops, the kernel counted %d in it", ns.Netns, ns.Total.Drops(), c.Events.Drops())
		}
	}
	e := New("fentry", 3, nil)
	e.Update(r)
	if err := gatherAll(e); err != nil {
		t.Errorf("scrape: %v", err)
	}
}
