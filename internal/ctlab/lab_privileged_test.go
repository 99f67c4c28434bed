//go:build privileged

package ctlab

import (
	"fmt"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cttrace/cttrace/internal/testbed"
	"golang.org/x/sys/unix"
)

// TestLabBasics: the namespace's identity, the two statistics sources agree,
// IPv4 and IPv6 flows and held connections become the expected entries.
func TestLabBasics(t *testing.T) {
	testbed.RequireRoot(t)
	l := New(t)

	// The inode of /run/netns/<name> is the namespace's: the same one a thread
	// inside sees, and a different one from ours.
	var inside string
	if err := l.Do(func() (err error) {
		inside, err = os.Readlink("/proc/thread-self/ns/net")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("net:[%d]", l.Inode()); inside != want {
		t.Fatalf("inside the lab the namespace is %s, Inode() says %s", inside, want)
	}
	outside, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	if outside == inside {
		t.Fatalf("Do did not change namespace (%s)", inside)
	}
	t.Logf("lab %s: namespace %s (test process in %s)", l.Name(), inside, outside)

	base := mustStats(t, l)
	t.Logf("fresh lab: %v", base)
	if base.Entries != 0 || base.Drop != 0 || base.EarlyDrop != 0 || base.InsertFailed != 0 {
		t.Fatalf("fresh lab has non-zero statistics: %v", base)
	}

	a, b := netip.MustParseAddr("127.10.0.1"), netip.MustParseAddr("127.10.0.2")
	dst := netip.MustParseAddrPort("127.0.0.1:9")
	for _, c := range []struct {
		src netip.Addr
		dst netip.AddrPort
		n   int
	}{{a, dst, 30}, {b, dst, 12}, {netip.IPv6Loopback(), netip.MustParseAddrPort("[::1]:9"), 7}} {
		sent, refused, err := l.SendNewFlows(c.src, c.dst, c.n)
		if err != nil || sent != c.n || refused != 0 {
			t.Fatalf("SendNewFlows(%v, %v, %d) = %d sent, %d refused, %v", c.src, c.dst, c.n, sent, refused, err)
		}
	}
	v6 := netip.MustParseAddrPort("[::1]:10")
	if sent, refused, err := l.RawFlood([]netip.Addr{netip.IPv6Loopback()}, v6, 5); err != nil || sent != 5 || refused != 0 {
		t.Fatalf("RawFlood v6 = %d sent, %d refused, %v", sent, refused, err)
	}
	if sent, refused, err := l.RawFlood([]netip.Addr{a, b}, dst, 9); err != nil || sent != 9 || refused != 0 {
		t.Fatalf("RawFlood v4 = %d sent, %d refused, %v", sent, refused, err)
	}
	if err := l.HoldEstablished(10); err != nil {
		t.Fatal(err)
	}
	if err := l.FillUnassured(3); err != nil {
		t.Fatal(err)
	}

	want := map[netip.Addr]int{a: 30 + 5, b: 12 + 4, netip.IPv6Loopback(): 7 + 5, HoldSourceBase: 10, FillSourceBase: 3}
	total := 0
	for _, n := range want {
		total += n
	}
	var assured, tcp int
	got := map[netip.Addr]int{}
	if err := l.Dump(func(e Entry) error {
		got[e.Src.Addr()]++
		if e.Proto == unix.IPPROTO_TCP {
			tcp++
			if e.Assured() {
				assured++
			}
		} else if e.Assured() || e.Status&StatusSeenReply != 0 {
			t.Errorf("UDP entry %v -> %v has status %#x: replied or assured", e.Src, e.Dst, e.Status)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("entries by source: got %v, want %v", got, want)
	}
	if tcp != 10 || assured != 10 {
		t.Fatalf("held connections: %d TCP entries, %d assured; want 10 and 10", tcp, assured)
	}
	bySrc, err := l.DumpBySource()
	if err != nil || fmt.Sprint(bySrc) != fmt.Sprint(want) {
		t.Fatalf("DumpBySource = %v, %v; want %v", bySrc, err, want)
	}

	s := mustStats(t, l)
	d := s.Sub(base)
	t.Logf("after %d flows and 10 connections: %v", total, s)
	if s.Entries != int64(total) || d.Drop != 0 || d.EarlyDrop != 0 || d.InsertFailed != 0 {
		t.Fatalf("want %d entries and no drop, eviction or insert failure: %v", total, s)
	}

	// RawFlood's rate with a roomy table (default buckets and max).
	const n = 20000
	srcs := []netip.Addr{netip.MustParseAddr("127.11.0.1"), netip.MustParseAddr("127.11.0.2")}
	start := time.Now()
	sent, refused, err := l.RawFlood(srcs, dst, n)
	el := time.Since(start)
	if err != nil || sent != n || refused != 0 {
		t.Fatalf("RawFlood(%d) = %d sent, %d refused, %v", n, sent, refused, err)
	}
	t.Logf("RawFlood: %d new flows in %v (%.0f packets/s)", n, el.Round(time.Millisecond), float64(n)/el.Seconds())
	total += n
	s = settle(t, l)
	if s.Entries != int64(total) {
		t.Fatalf("%d entries, want %d", s.Entries, total)
	}

	// Both sources agree on a quiet table.
	nl, err := l.StatsNetlink()
	if err != nil {
		t.Fatal(err)
	}
	if s.Source == "procfs" {
		nl.Source = s.Source
		if nl != s {
			t.Fatalf("procfs and ctnetlink disagree:\nprocfs    %v\nctnetlink %v", s, nl)
		}
	} else {
		t.Logf("no %s on this kernel: statistics come from ctnetlink", procStatPath)
	}
}

func mustStats(t testing.TB, l *Lab) Stats {
	t.Helper()
	s, err := l.Stats()
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	return s
}
