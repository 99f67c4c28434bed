//go:build privileged

package session

import (
	"net/netip"
	"testing"
	"time"

	"github.com/cttrace/cttrace/internal/ctlab"
	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/probe"
)

// The kernel side counts each namespace under its identity, not its inode
// number: a namespace that dies and the next one, which the kernel may give
// its inode number, are counted apart, each exactly; and once told a
// namespace died, the kernel side forgets its counts and its sources.
func TestNamespacesAreCountedByIdentity(t *testing.T) {
	f, err := probe.DetectBackends()
	if err != nil {
		t.Fatal(err)
	}
	if x, _ := f.Get(probe.FeatNetnsCookie); !x.Usable {
		t.Skipf("no netns cookie for user space on this kernel (%s): namespaces are counted by inode number here", x.Error)
	}
	usableBackends(t, func(t *testing.T, b probe.Backend) {
		const max = 8
		ctlab.SetMax(t, max)
		_, s, stop := traceWith(t, Config{Backend: b, Sources: probe.SourceOptions{Enabled: true}}, 0)
		defer stop()
		first, err := ctlab.Open("cttrace-identity")
		if err != nil {
			t.Fatal(err)
		}
		defer first.Close()
		if err := first.Refuse(max, netip.MustParseAddr("127.93.0.1"), scale(200)); err != nil {
			t.Fatal(err)
		}
		dead := waitNamespace(t, s, first.Inode(), nil, scale(200))
		inode := first.Inode()
		if err := first.Close(); err != nil {
			t.Fatal(err)
		}
		// The kernel hands the inode number out again once its cleanup of the
		// dead namespace ran (a workqueue).
		next, err := ctlab.OpenWithInode("cttrace-identity", inode, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer next.Close()
		if err := next.Refuse(max, netip.MustParseAddr("127.93.0.2"), scale(70)); err != nil {
			t.Fatal(err)
		}
		live := waitNamespace(t, s, inode, &dead, scale(70))
		if live.ID == dead.ID {
			t.Fatalf("the dead namespace and the next one of inode %d have one identity %d", inode, live.ID)
		}
		t.Logf("%s: inode %d named identity %d (%d refusals), then %d (%d)", b, inode, dead.ID, scale(200), live.ID, scale(70))

		if err := s.Forget([]event.Netns{dead}); err != nil {
			t.Fatal(err)
		}
		counts, err := s.NamespaceCounts()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := counts[dead]; ok || counts[live].Events.Of(event.ReasonTableFull) != uint64(scale(70)) {
			t.Errorf("after forgetting %d: %+v", dead.ID, counts)
		}
		err = s.Sources(func(st *event.SourceCounts) error {
			if st.Netns.ID == dead.ID {
				t.Errorf("source %s of the forgotten namespace still read", st.Prefix)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// waitNamespace polls until the kernel side has counted want refusals for
// the namespace of that inode number other than not, and returns it.
func waitNamespace(t *testing.T, s *Session, inode uint32, not *event.Netns, want int) event.Netns {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		counts, err := s.NamespaceCounts()
		if err != nil {
			t.Fatal(err)
		}
		for ns, c := range counts {
			if ns.Inode == inode && (not == nil || ns.ID != not.ID) && c.Events.Of(event.ReasonTableFull) == uint64(want) {
				return ns
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no namespace of inode %d with %d table_full within 30 s: %+v", inode, want, counts)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
