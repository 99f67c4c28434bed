//go:build privileged

package table_test

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cttrace/cttrace/internal/ctlab"
	"github.com/cttrace/cttrace/internal/testbed"
	"github.com/cttrace/cttrace/pkg/table"
	"golang.org/x/sys/unix"
)

var capture = flag.Bool("capture", false, "rewrite testdata/*.hex with this kernel's replies")

// sendCaptureFlows sends the flows the captured replies describe.
func sendCaptureFlows(t *testing.T, l *ctlab.Lab) {
	t.Helper()
	if ctlab.HoldSourceBase != table.CaptureHeldSrc {
		t.Fatalf("ctlab holds connections from %v, the captures expect %v", ctlab.HoldSourceBase, table.CaptureHeldSrc)
	}
	for _, f := range table.CaptureUDP {
		mustSend(t, l, f.Src, f.Dst, f.N)
	}
	if err := l.HoldEstablished(table.CaptureHeld); err != nil {
		t.Fatal(err)
	}
}

func mustSend(t *testing.T, l *ctlab.Lab, src netip.Addr, dst netip.AddrPort, n int) {
	t.Helper()
	if sent, refused, err := l.SendNewFlows(src, dst, n); err != nil || sent != n || refused != 0 {
		t.Fatalf("SendNewFlows(%v, %v, %d) = %d sent, %d refused, %v", src, dst, n, sent, refused, err)
	}
}

// TestCapturedRepliesMatchKernel: this kernel's replies about the captured
// flows pass the checks the unit tests apply to testdata/, both live and
// replayed; -capture rewrites testdata/ with them.
func TestCapturedRepliesMatchKernel(t *testing.T) {
	testbed.RequireRoot(t)
	l := ctlab.New(t)
	sendCaptureFlows(t, l)
	ns := l.Namespace()

	c, err := ns.Dial()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	table.CheckDump(t, c)
	// CTA_STATS_CHAIN_TOOLONG came with 5.15 (5.10 has CLASH_RESOLVE).
	newCounters := testbed.KernelAtLeast(5, 15)
	s := table.CheckStats(t, c, newCounters)
	if max, err := ctlab.ReadGlobal(ctlab.MaxPath); err != nil || s.Max != int64(max) {
		t.Errorf("ctnetlink max %d, nf_conntrack_max %d (%v)", s.Max, max, err)
	}

	dump, err := table.CaptureReplies(ns, false)
	if err != nil {
		t.Fatal(err)
	}
	stats, err := table.CaptureReplies(ns, true)
	if err != nil {
		t.Fatal(err)
	}
	table.CheckDump(t, table.Replay(t, dump))
	table.CheckStats(t, table.Replay(t, stats), newCounters)
	t.Logf("dump: %d entries in %d receive buffers; stats: %d buffers", table.CaptureEntries(), len(dump), len(stats))
	if !*capture || t.Failed() {
		return
	}
	var uts unix.Utsname
	unix.Uname(&uts)
	kernel := unix.ByteSliceToString(uts.Release[:])
	for name, bufs := range map[string][][]byte{"dump.hex": dump, "stats.hex": stats} {
		comment := fmt.Sprintf("ctnetlink replies of Linux %s, captured by TestCapturedRepliesMatchKernel -capture; one receive buffer per line", kernel)
		if err := table.WriteCapture(filepath.Join("testdata", name), comment, bufs); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("rewrote testdata/dump.hex and testdata/stats.hex from %s", kernel)
}

// TestDumpCountsWhatWasSent: per source, the dump shows as many entries as
// flows were sent (IPv4 and IPv6, UDP and TCP), the count equals the dump's
// total, and ctnetlink's figures equal procfs's where the kernel has both.
func TestDumpCountsWhatWasSent(t *testing.T) {
	testbed.RequireRoot(t)
	l := ctlab.New(t)
	want := map[netip.Addr]int{}
	dst := netip.MustParseAddrPort("127.0.0.1:9")
	for k := 1; k <= 8; k++ {
		src := netip.AddrFrom4([4]byte{127, 70, 0, byte(k)})
		mustSend(t, l, src, dst, 25*k)
		want[src] += 25 * k
	}
	raw := []netip.Addr{netip.MustParseAddr("127.71.0.1"), netip.MustParseAddr("127.71.0.2")}
	if sent, refused, err := l.RawFlood(raw, dst, 2001); err != nil || sent != 2001 || refused != 0 {
		t.Fatalf("RawFlood v4 = %d sent, %d refused, %v", sent, refused, err)
	}
	want[raw[0]] += 1001
	want[raw[1]] += 1000
	v6 := netip.IPv6Loopback()
	if sent, refused, err := l.RawFlood([]netip.Addr{v6}, netip.MustParseAddrPort("[::1]:10"), 50); err != nil || sent != 50 || refused != 0 {
		t.Fatalf("RawFlood v6 = %d sent, %d refused, %v", sent, refused, err)
	}
	mustSend(t, l, v6, netip.MustParseAddrPort("[::1]:9"), 7)
	want[v6] += 57
	if err := l.HoldEstablished(20); err != nil {
		t.Fatal(err)
	}
	want[ctlab.HoldSourceBase] += 20
	total := 0
	for _, n := range want {
		total += n
	}

	got := map[netip.Addr]int{}
	var assured int
	err := l.Namespace().DumpBySource(func(src netip.Addr, status uint32) error {
		got[src]++
		if status&table.StatusAssured != 0 {
			assured++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) || assured != 20 {
		t.Fatalf("entries by source:\ngot  %v (%d assured)\nwant %v (20 assured)", got, assured, want)
	}

	s, err := l.Namespace().Stats()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d entries from %d sources; %v", total, len(want), s)
	if s.Entries != int64(total) || s.Drop != 0 || s.EarlyDrop != 0 || s.InsertFailed != 0 {
		t.Fatalf("stats %v: want %d entries and no drop, eviction or insert failure", s, total)
	}
	p, err := l.StatsProcfs()
	if errors.Is(err, os.ErrNotExist) {
		t.Logf("no procfs statistics on this kernel to compare with")
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if p.Stats != s {
		t.Fatalf("ctnetlink and procfs disagree:\nctnetlink %v\nprocfs    %v", s, p.Stats)
	}
}

// kthreaddNamespace is the initial network namespace: kernel threads run
// in the initial namespaces.
func kthreaddNamespace(t *testing.T) uint32 {
	t.Helper()
	comm, err := os.ReadFile("/proc/2/comm")
	if err != nil || strings.TrimSpace(string(comm)) != "kthreadd" {
		t.Fatalf("PID 2 is %q (%v), not kthreadd", comm, err)
	}
	return nsInode(t, "/proc/2/ns/net")
}

func nsInode(t *testing.T, path string) uint32 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return uint32(st.Ino)
}

// TestNamespaces: the initial namespace comes first, each namespace once,
// each path leads to its inode; a Lab with entries is listed under its
// name, an idle one only once conntrack tracked a packet in it.
func TestNamespaces(t *testing.T) {
	testbed.RequireRoot(t)
	busy, idle := ctlab.New(t), ctlab.New(t)
	mustSend(t, busy, netip.MustParseAddr("127.72.0.1"), netip.MustParseAddrPort("127.0.0.1:9"), 3)

	list := mustNamespaces(t)
	if init := kthreaddNamespace(t); list[0].Inode != init || list[0].Name != "" {
		t.Errorf("first namespace %+v, want the initial one (%d)", list[0], init)
	}
	seen := map[uint32]table.Namespace{}
	for _, ns := range list {
		if prev, dup := seen[ns.Inode]; dup {
			t.Errorf("inode %d listed twice: %+v and %+v", ns.Inode, prev, ns)
		}
		seen[ns.Inode] = ns
		var st unix.Stat_t
		if err := unix.Stat(ns.Path, &st); err == nil && uint32(st.Ino) != ns.Inode {
			t.Errorf("%+v: path leads to %d", ns, st.Ino)
		}
	}
	if got := seen[busy.Inode()]; got != busy.Namespace() {
		t.Errorf("busy lab listed as %+v, want %+v", got, busy.Namespace())
	}
	if got, ok := seen[idle.Inode()]; ok {
		t.Errorf("idle lab listed: %+v", got)
	}
	t.Logf("%d namespaces with conntrack in use: %v", len(list), list)

	mustSend(t, idle, netip.MustParseAddr("127.72.0.2"), netip.MustParseAddrPort("127.0.0.1:9"), 1)
	found := false
	for _, ns := range mustNamespaces(t) {
		found = found || ns == idle.Namespace()
	}
	if !found {
		t.Errorf("lab %s not listed after a flow", idle.Name())
	}
}

func mustNamespaces(t *testing.T) []table.Namespace {
	t.Helper()
	list, err := table.Namespaces()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) == 0 {
		t.Fatal("no namespace")
	}
	return list
}

// TestNoThreadLeftInNamespace: after many concurrent dials every thread of
// the process is back in its own namespace, the main thread included.
func TestNoThreadLeftInNamespace(t *testing.T) {
	testbed.RequireRoot(t)
	l := ctlab.New(t)
	mustSend(t, l, netip.MustParseAddr("127.73.0.1"), netip.MustParseAddrPort("127.0.0.1:9"), 1)
	home := nsInode(t, "/proc/thread-self/ns/net")
	if home == l.Inode() {
		t.Fatal("test runs in the lab's namespace")
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			for range 25 {
				if s, err := l.Namespace().Stats(); err != nil || s.Entries != 1 {
					errs <- fmt.Errorf("stats %v, %v", s, err)
					return
				}
				runtime.Gosched()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// ctlab's own Do threads (New ran some) end just after their work.
	deadline := time.Now().Add(5 * time.Second)
	for {
		away := threadsAway(t, home)
		if len(away) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("threads in another namespace than %d: %v", home, away)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := nsInode(t, "/proc/self/ns/net"); got != home {
		t.Fatalf("main thread in namespace %d, want %d", got, home)
	}
}

// threadsAway lists "TID:inode" of the threads not in namespace home.
func threadsAway(t *testing.T, home uint32) []string {
	t.Helper()
	tids, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	var away []string
	for _, e := range tids {
		var st unix.Stat_t
		if unix.Stat(filepath.Join("/proc/self/task", e.Name(), "ns", "net"), &st) == nil && uint32(st.Ino) != home {
			away = append(away, e.Name()+":"+strconv.FormatUint(st.Ino, 10))
		}
	}
	return away
}

// TestAbandonedDump: an error from the callback ends the dump with that
// error; the connection then refuses further requests (the rest of the
// dump is still queued for it), and a new one works.
func TestAbandonedDump(t *testing.T) {
	testbed.RequireRoot(t)
	l := ctlab.New(t)
	if sent, _, err := l.RawFlood([]netip.Addr{netip.MustParseAddr("127.74.0.1")}, netip.MustParseAddrPort("127.0.0.1:9"), 1000); err != nil || sent != 1000 {
		t.Fatalf("RawFlood: %d sent, %v", sent, err)
	}
	c, err := l.Namespace().Dial()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	stop := errors.New("enough")
	if err := c.Dump(func(table.Entry) error { return stop }); !errors.Is(err, stop) {
		t.Fatalf("dump returned %v, want the callback's error", err)
	}
	if _, err := c.Stats(); err == nil {
		t.Fatal("stats on a connection with an abandoned dump succeeded")
	}
	if s, err := l.Namespace().Stats(); err != nil || s.Entries != 1000 {
		t.Fatalf("new connection: %v, %v", s, err)
	}
}

// dumpSize is the table size TestLargeDumpBoundedMemory dumps
// (CTTRACE_TABLE_DUMP_ENTRIES overrides it).
func dumpSize(t *testing.T) int {
	n := 200_000
	if v := os.Getenv("CTTRACE_TABLE_DUMP_ENTRIES"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			t.Fatalf("CTTRACE_TABLE_DUMP_ENTRIES=%q", v)
		}
	}
	return n
}

// TestLargeDumpBoundedMemory: a dump of a large table counts every entry
// per source while the Go heap stays flat: it allocates a constant amount
// whatever the number of entries.
func TestLargeDumpBoundedMemory(t *testing.T) {
	testbed.RequireRoot(t)
	n := dumpSize(t)
	l := ctlab.New(t)
	// Short hash chains, so that insertion stays fast under emulation and
	// never fails for chain length. Twice the room needed: above 95 % of the
	// max, the garbage collector's next pass after a table-full refusal (in
	// any namespace) evicts unreplied entries.
	ctlab.SetBuckets(t, 262144)
	ctlab.SetMax(t, 2*n)
	srcs := make([]netip.Addr, (n+49_999)/50_000) // 65535 flows per source at most
	for i := range srcs {
		srcs[i] = netip.AddrFrom4([4]byte{127, 75, byte(i >> 8), byte(i + 1)})
	}
	start := time.Now()
	sent, refused, err := l.RawFlood(srcs, netip.MustParseAddrPort("127.0.0.1:9"), n)
	if err != nil || sent != n || refused != 0 {
		t.Fatalf("RawFlood(%d) = %d sent, %d refused, %v", n, sent, refused, err)
	}
	t.Logf("filled the table with %d flows from %d sources in %v", n, len(srcs), time.Since(start).Round(time.Millisecond))

	bySrc := make(map[netip.Addr]int, len(srcs))
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	peak := m0.HeapAlloc
	seen := 0
	start = time.Now()
	err = l.Namespace().DumpBySource(func(src netip.Addr, _ uint32) error {
		bySrc[src]++
		if seen++; seen%50_000 == 0 {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			peak = max(peak, m.HeapAlloc)
		}
		return nil
	})
	el := time.Since(start)
	runtime.ReadMemStats(&m1)
	if err != nil {
		t.Fatal(err)
	}
	allocated := m1.TotalAlloc - m0.TotalAlloc
	t.Logf("dump of %d entries in %v (%.0f entries/s): %d bytes in %d allocations; heap peak +%d bytes (sampled every 50000 entries), in use %d -> %d bytes",
		seen, el.Round(time.Millisecond), float64(seen)/el.Seconds(), allocated, m1.Mallocs-m0.Mallocs,
		peak-m0.HeapAlloc, m0.HeapAlloc, m1.HeapAlloc)
	for i, src := range srcs {
		want := n / len(srcs)
		if i < n%len(srcs) {
			want++ // RawFlood's round robin
		}
		if bySrc[src] != want {
			t.Errorf("%v: %d entries in the dump, %d sent", src, bySrc[src], want)
		}
	}
	if seen != n {
		t.Errorf("dump has %d entries, %d sent", seen, n)
	}
	// One 32 KiB buffer, the connection and a few closures: nothing per
	// entry (200,000 entries at even 2 bytes each would exceed it).
	if allocated > 256<<10 {
		t.Errorf("the dump allocated %d bytes", allocated)
	}
	s, err := l.Namespace().Stats()
	if err != nil || s.Entries != int64(n) {
		t.Errorf("stats after the dump: %v, %v; want %d entries", s, err, n)
	}
}
