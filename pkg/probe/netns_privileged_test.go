//go:build privileged

package probe

import (
	"net/netip"
	"testing"
	"time"

	"github.com/cttrace/cttrace/internal/ctlab"
	"github.com/cttrace/cttrace/internal/testbed"
	"github.com/cttrace/cttrace/pkg/event"
)

// Where user space reads no netns cookie (5.10), namespaces are counted by
// inode number, and the kernel gives a dead namespace's inode to the next
// one: the same identity. Once told the first died, the kernel side shows
// the next one's counts only (not the dead one's on top, and not none:
// the dead identity cannot be hidden, as a dead cookie is), and its
// sources only. On a kernel with cookies, the test turns them off.
func TestNamespacesByInodeNumber(t *testing.T) {
	testbed.RequireRoot(t)
	f, err := DetectFeatures()
	if err != nil {
		t.Fatal(err)
	}
	for i := range f.List {
		if f.List[i].Name == FeatNetnsCookie {
			f.List[i].Usable, f.List[i].Error = false, "turned off by the test"
		}
	}
	b, why, err := f.ChooseBackend(BackendAuto)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("backend %s: %s", b, why)
	const max = 8
	ctlab.SetMax(t, max)
	p, err := Attach(f, b, Options{Sources: SourceOptions{Enabled: true}})
	if err != nil {
		t.Fatalf("attach: %v", err)
	}
	defer p.Close()
	if err := p.RefreshMax(); err != nil {
		t.Fatal(err)
	}
	clock, err := event.NewClock()
	if err != nil {
		t.Fatal(err)
	}
	first, err := ctlab.Open("cttrace-inode")
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	ns := event.NetnsOf(first.Inode())
	if err := first.Refuse(max, netip.MustParseAddr("127.94.0.1"), 40); err != nil {
		t.Fatal(err)
	}
	waitRefusals(t, p, ns, 40)
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	next, err := ctlab.OpenWithInode("cttrace-inode", ns.Inode, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close()
	// Told now, as top-sources tells once the tables missed the inode twice.
	if err := p.Forget([]event.Netns{ns}); err != nil {
		t.Fatal(err)
	}
	counts, err := p.NamespaceCounts()
	if err != nil {
		t.Fatal(err)
	}
	if n := counts[ns].Events.Of(event.ReasonTableFull); n != 0 {
		t.Fatalf("forgotten, the identity still shows %d refusals", n)
	}
	if err := next.Refuse(max, netip.MustParseAddr("127.94.0.2"), 7); err != nil {
		t.Fatal(err)
	}
	waitRefusals(t, p, ns, 7)
	bySource := map[netip.Prefix]uint64{}
	err = p.Sources(clock, func(st *event.SourceCounts) error {
		if n := st.Events.Of(event.ReasonTableFull); st.Netns == ns && n > 0 { // not the flows that fill the table
			bySource[st.Prefix] += n
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := netip.MustParsePrefix("127.94.0.2/32"); len(bySource) != 1 || bySource[want] != 7 {
		t.Errorf("refused sources of inode %d: %v, want only %s at 7", ns.Inode, bySource, want)
	}
}

// waitRefusals polls until the kernel side counted exactly want refusals
// for ns, and fails if it counts more.
func waitRefusals(t *testing.T, p *Probe, ns event.Netns, want uint64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		counts, err := p.NamespaceCounts()
		if err != nil {
			t.Fatal(err)
		}
		n := counts[ns].Events.Of(event.ReasonTableFull)
		if n == want {
			return
		}
		if n > want || time.Now().After(deadline) {
			t.Fatalf("inode %d at %d refusals, want %d (all: %+v)", ns.Inode, n, want, counts)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
