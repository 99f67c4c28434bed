//go:build privileged

package ctlab

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cttrace/cttrace/internal/testbed"
	"golang.org/x/sys/unix"
)

// The tests run in file order. TestEvictions comes before TestTableFull: a
// table-full refusal arms the conntrack garbage collector's "early drop"
// mode (global), in which its next pass kills evictable entries of any
// namespace at 95 % of the max, without any counter.

var sinkDst = netip.MustParseAddrPort("127.0.0.1:9")

// TestEvictions: a table full of unreplied UDP entries admits new flows by
// evicting entries; early_drop counts the evicted entries.
func TestEvictions(t *testing.T) {
	testbed.RequireRoot(t)
	const maxN = 1024
	const flows = 3000
	l := New(t)
	// 512 buckets for 1024 entries (2048 hash nodes: both directions are
	// hashed) so that early_drop, which scans 8 buckets from the new flow's
	// hash, always finds an evictable entry; with the default size most of
	// the 8 buckets would be empty and the new flow refused instead.
	SetBuckets(t, 512)
	SetMax(t, maxN)
	if err := l.FillUnassured(maxN); err != nil {
		t.Fatal(err)
	}
	s0 := settle(t, l)
	if s0.Entries != maxN {
		t.Fatalf("after FillUnassured(%d): %d entries", maxN, s0.Entries)
	}

	// One flow at a time first: with the table at its max, each admitted flow
	// must have evicted k >= 1 entries (early_drop evicts every evictable entry
	// of the first bucket chain that has one) and the count becomes
	// max + 1 - k; with room left, nothing is evicted.
	src := netip.MustParseAddr("127.20.0.1")
	steps, atFull, multi := 200, 0, 0
	prev := s0
	judged, gcSteps := 0, 0
	for i := range steps {
		sent, refused, err := l.SendNewFlows(src, sinkDst, 1)
		if err != nil {
			t.Fatal(err)
		}
		cur := mustStats(t, l)
		d := cur.Sub(prev)
		// Entries leave only through eviction (counted in early_drop) or,
		// after some table-full refusal anywhere armed it, the garbage
		// collector's early-drop mode (not counted): such a step cannot be
		// judged.
		if uncounted := prev.Entries + int64(sent) - cur.Entries - d.EarlyDrop; uncounted != 0 {
			if uncounted < 0 {
				t.Fatalf("step %d: entries %d -> %d with %d admitted and %d evicted", i, prev.Entries, cur.Entries, sent, d.EarlyDrop)
			}
			t.Logf("step %d: %d entries removed without a counter (garbage collector): not judged", i, uncounted)
			gcSteps++
			prev = cur
			continue
		}
		judged++
		switch {
		case refused == 1:
			if d.Drop != 1 || d.EarlyDrop != 0 {
				t.Fatalf("step %d: refused flow: drop +%d, early_drop +%d; want +1 and +0", i, d.Drop, d.EarlyDrop)
			}
		case prev.Entries == maxN:
			atFull++
			if d.EarlyDrop < 1 || cur.Entries != maxN+1-d.EarlyDrop || d.Drop != 0 {
				t.Fatalf("step %d: flow admitted at max: early_drop +%d, entries %d -> %d, drop +%d", i, d.EarlyDrop, prev.Entries, cur.Entries, d.Drop)
			}
			if d.EarlyDrop > 1 {
				multi++
			}
		default:
			if sent != 1 || d.EarlyDrop != 0 || d.Entries != 1 {
				t.Fatalf("step %d: flow admitted below max (%d): early_drop +%d, entries +%d", i, prev.Entries, d.EarlyDrop, d.Entries)
			}
		}
		prev = cur
	}
	// One pass of the garbage collector kills every evictable entry it meets
	// (nearly the whole table), so it shows in a step or two; many unjudged
	// steps would rather mean evictions early_drop does not count.
	if gcSteps > 3 {
		t.Fatalf("%d of %d steps lost entries without a counter", gcSteps, steps)
	}
	if atFull == 0 {
		t.Fatalf("no flow was admitted at max in %d steps", steps)
	}
	ds := prev.Sub(s0)
	t.Logf("%d single flows (%d judged): %d admitted at max (%d of them evicted more than one entry), early_drop +%d, drop +%d, entries %d",
		steps, judged, atFull, multi, ds.EarlyDrop, ds.Drop, prev.Entries)

	// Then in bulk, from two sources.
	srcs := []netip.Addr{netip.MustParseAddr("127.20.0.2"), netip.MustParseAddr("127.20.0.3")}
	start := time.Now()
	var sent, refused int
	for _, src := range srcs {
		s, r, err := l.SendNewFlows(src, sinkDst, flows/2)
		if err != nil {
			t.Fatal(err)
		}
		if s+r != flows/2 {
			t.Fatalf("%v: %d sent + %d refused != %d", src, s, r, flows/2)
		}
		sent, refused = sent+s, refused+r
	}
	elapsed := time.Since(start)
	s1 := settle(t, l)
	d := s1.Sub(prev)
	removed := prev.Entries + int64(sent) - s1.Entries
	t.Logf("%d flows in %v: %d sent, %d refused; %v", flows, elapsed.Round(time.Millisecond), sent, refused, d)
	t.Logf("entries %d -> %d: %d removed, early_drop +%d (%.2f evicted per admitted flow)",
		prev.Entries, s1.Entries, removed, d.EarlyDrop, float64(d.EarlyDrop)/float64(max(sent, 1)))
	if d.Drop != int64(refused) {
		t.Errorf("drop +%d, but %d flows were refused", d.Drop, refused)
	}
	if d.InsertFailed != 0 || d.ChainTooLong != 0 {
		t.Errorf("insert failures: %v", d)
	}
	if d.EarlyDrop < 1 {
		t.Errorf("no eviction")
	}
	if s1.Entries > maxN {
		t.Errorf("%d entries, above the max %d", s1.Entries, maxN)
	}
	// Conservation: entries only leave through eviction (counted) or the
	// garbage collector's early-drop mode (not counted); nothing expires
	// (the lab's UDP timeout is an hour).
	if d.EarlyDrop > removed {
		t.Errorf("early_drop +%d but only %d entries left the table", d.EarlyDrop, removed)
	}
	if d.EarlyDrop != removed {
		t.Logf("%d entries removed without being counted (the garbage collector's early-drop mode)", removed-d.EarlyDrop)
	}
	checkDumpTotal(t, l, s1.Entries)
}

// TestInsertFailures: with 512 hash buckets, confirmations fail when a
// bucket's chain is too long; each failure is counted in insert_failed and
// chaintoolong and refused at the sender.
func TestInsertFailures(t *testing.T) {
	testbed.RequireRoot(t)
	if !testbed.KernelAtLeast(5, 15) {
		// Before 5.15 a hash chain has no length limit: a small table only
		// makes chains long, and every insert succeeds (50,000 of 50,000 on
		// 5.10 in the VM tier).
		t.Skip("no chain length limit before 5.15 (commit d7e7747ac5c2, \"netfilter: refuse insertion if chain has grown too large\")")
	}
	const flows = 50000
	l := New(t)
	SetBuckets(t, 512)
	if max, err := ReadGlobal(MaxPath); err != nil {
		t.Fatal(err)
	} else if max < 2*flows {
		SetMax(t, 2*flows) // no table-full refusal may mix in
	}
	s0 := mustStats(t, l)
	srcs := []netip.Addr{
		netip.MustParseAddr("127.30.0.1"), netip.MustParseAddr("127.30.0.2"),
		netip.MustParseAddr("127.30.0.3"), netip.MustParseAddr("127.30.0.4"),
	}
	start := time.Now()
	sent, refused, err := l.RawFlood(srcs, sinkDst, flows)
	elapsed := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	s1 := settle(t, l)
	d := s1.Sub(s0)
	t.Logf("RawFlood of %d flows from %d sources in %v (%.0f packets/s): %d sent, %d refused",
		flows, len(srcs), elapsed.Round(time.Millisecond), float64(flows)/elapsed.Seconds(), sent, refused)
	t.Logf("delta: %v", d)
	if sent+refused != flows {
		t.Fatalf("%d sent + %d refused != %d", sent, refused, flows)
	}
	if refused == 0 {
		t.Fatalf("no insert failure with 512 buckets and %d flows", flows)
	}
	if !s1.HasChainTooLong {
		t.Fatalf("kernel reports no chaintoolong counter")
	}
	if d.InsertFailed != int64(refused) || d.ChainTooLong != int64(refused) {
		t.Errorf("insert_failed +%d, chaintoolong +%d, refused %d: want all equal", d.InsertFailed, d.ChainTooLong, refused)
	}
	if d.Drop != 0 || d.EarlyDrop != 0 || d.ClashResolve != 0 {
		t.Errorf("unexpected drop/early_drop/clash_resolve: %v", d)
	}
	if s1.Entries != int64(sent) {
		t.Errorf("%d entries, %d flows admitted", s1.Entries, sent)
	}

	// The socket path sees the same refusals.
	before := s1
	src := netip.MustParseAddr("127.30.0.5")
	const n = 2000
	sent2, refused2, err := l.SendNewFlows(src, sinkDst, n)
	if err != nil {
		t.Fatal(err)
	}
	s2 := settle(t, l)
	d2 := s2.Sub(before)
	t.Logf("then SendNewFlows of %d: %d sent, %d refused; %v", n, sent2, refused2, d2)
	if d2.InsertFailed != int64(refused2) || d2.ChainTooLong != int64(refused2) || d2.Drop != 0 || d2.Entries != int64(sent2) {
		t.Errorf("SendNewFlows: %d sent, %d refused, but %v", sent2, refused2, d2)
	}
	by := checkDumpTotal(t, l, s2.Entries)
	t.Logf("entries by source: %v", by)
	if by[src] != sent2 {
		t.Errorf("%d entries from %v, %d flows admitted", by[src], src, sent2)
	}
}

// TestTableFull: a table held full by established connections refuses every
// new flow, and drop counts exactly the refusals.
func TestTableFull(t *testing.T) {
	testbed.RequireRoot(t)
	const maxN = 256
	l := New(t)
	SetMax(t, maxN)
	// Each TCP connection over loopback is one entry (client to listener;
	// the listener itself has none).
	if err := l.HoldEstablished(maxN); err != nil {
		t.Fatal(err)
	}
	s0 := settle(t, l)
	if s0.Entries != maxN {
		t.Fatalf("after HoldEstablished(%d): %d entries", maxN, s0.Entries)
	}
	var held, assured int
	if err := l.Dump(func(e Entry) error {
		if e.Proto == unix.IPPROTO_TCP && e.Src.Addr() == HoldSourceBase {
			held++
			if e.Assured() {
				assured++
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if held != maxN || assured != maxN {
		t.Fatalf("dump: %d held connections, %d assured; want %d", held, assured, maxN)
	}

	kmsg := openKmsg(t)
	cases := []struct {
		src  netip.Addr
		dst  netip.AddrPort
		n    int
		sent int
		ref  int
	}{
		{src: netip.MustParseAddr("127.1.0.1"), dst: sinkDst, n: 50},
		{src: netip.MustParseAddr("127.1.0.2"), dst: sinkDst, n: 100},
		{src: netip.MustParseAddr("127.1.0.3"), dst: sinkDst, n: 150},
		{src: netip.IPv6Loopback(), dst: netip.MustParseAddrPort("[::1]:9"), n: 20},
	}
	total := 0
	for i := range cases {
		c := &cases[i]
		var err error
		c.sent, c.ref, err = l.SendNewFlows(c.src, c.dst, c.n)
		if err != nil {
			t.Fatal(err)
		}
		if c.sent != 0 || c.ref != c.n {
			t.Errorf("%v: %d sent, %d refused; want 0 and %d", c.src, c.sent, c.ref, c.n)
		}
		total += c.ref
	}
	rawSrcs := []netip.Addr{cases[0].src, cases[1].src, cases[2].src}
	rsent, rref, err := l.RawFlood(rawSrcs, sinkDst, 90)
	if err != nil {
		t.Fatal(err)
	}
	if rsent != 0 || rref != 90 {
		t.Errorf("RawFlood: %d sent, %d refused; want 0 and 90", rsent, rref)
	}
	total += rref
	s1 := settle(t, l)
	d := s1.Sub(s0)
	t.Logf("table full: %d flows refused, %v", total, d)
	if d.Drop != int64(total) {
		t.Errorf("drop +%d, refused %d", d.Drop, total)
	}
	if d.EarlyDrop != 0 || d.InsertFailed != 0 || d.Entries != 0 {
		t.Errorf("unexpected change: %v", d)
	}
	by := checkDumpTotal(t, l, s1.Entries)
	if by[HoldSourceBase] != maxN || len(by) != 1 {
		t.Errorf("entries by source: %v; want only %v: %d", by, HoldSourceBase, maxN)
	}
	checkTableFullLog(t, l, kmsg)

	// Control: with room for 100 more, the next 100 flows pass and the 101st
	// is refused again, unless early_drop finds one of the 100 (unreplied,
	// so evictable) in the 8 buckets it searches from the 101st's hash
	// (about 1 run in 80 with 65,536 buckets): then the 101st is admitted
	// in its place.
	SetMax(t, maxN+100)
	src := netip.MustParseAddr("127.1.0.4")
	sent, refused, err := l.SendNewFlows(src, sinkDst, 101)
	if err != nil {
		t.Fatal(err)
	}
	s2 := settle(t, l)
	d2 := s2.Sub(s1)
	t.Logf("max %d: %d sent, %d refused; %v", maxN+100, sent, refused, d2)
	refusedLast := sent == 100 && refused == 1 && d2.Drop == 1 && d2.EarlyDrop == 0
	evictedOne := sent == 101 && refused == 0 && d2.Drop == 0 && d2.EarlyDrop == 1
	if !(refusedLast || evictedOne) || d2.Entries != 100 {
		t.Errorf("with room for 100: %d sent, %d refused, %v; want the 101st refused, or admitted by evicting one of the 100", sent, refused, d2)
	}
}

// TestCleanup: a Lab's cleanup leaves no namespace, socket, thread in the
// namespace, goroutine, lock or changed sysctl behind; and a lock file left
// by a run that died is used to restore the sysctls.
func TestCleanup(t *testing.T) {
	testbed.RequireRoot(t)
	max0, err := ReadGlobal(MaxPath)
	if err != nil {
		t.Fatal(err)
	}
	buckets0, err := ReadGlobal(BucketsPath)
	if err != nil {
		t.Fatal(err)
	}
	fds0, gor0 := countFDs(t), runtime.NumGoroutine()
	t.Logf("global nf_conntrack_max %d, nf_conntrack_buckets %d", max0, buckets0)

	var name string
	var inode uint32
	t.Run("lab", func(t *testing.T) {
		l := New(t)
		name, inode = l.Name(), l.Inode()
		SetBuckets(t, 1024)
		SetMax(t, 4096)
		SetMax(t, 2048) // restored to the value before the first change
		if err := l.HoldEstablished(20); err != nil {
			t.Fatal(err)
		}
		if err := l.FillUnassured(20); err != nil {
			t.Fatal(err)
		}
		if _, _, err := l.SendNewFlows(netip.IPv6Loopback(), netip.MustParseAddrPort("[::1]:9"), 5); err != nil {
			t.Fatal(err)
		}
		if _, _, err := l.RawFlood([]netip.Addr{netip.MustParseAddr("127.40.0.1")}, sinkDst, 20); err != nil {
			t.Fatal(err)
		}
		if s := mustStats(t, l); s.Entries != 20+20+5+20 {
			t.Fatalf("%d entries, want 65", s.Entries)
		}
		if b, err := os.ReadFile(LockPath); err != nil || !bytes.Contains(b, []byte(MaxPath)) {
			t.Fatalf("lock file while held: %q, %v", b, err)
		}
	})

	out, err := run(nil, "ip", "netns", "list")
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	if bytes.Contains(out, []byte(name)) {
		t.Errorf("namespace %s still listed: %s", name, out)
	}
	if _, err := os.Stat(filepath.Join("/run/netns", name)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("/run/netns/%s: %v", name, err)
	}
	if v, _ := ReadGlobal(MaxPath); v != max0 {
		t.Errorf("nf_conntrack_max %d, was %d", v, max0)
	}
	if v, _ := ReadGlobal(BucketsPath); v != buckets0 {
		t.Errorf("nf_conntrack_buckets %d, was %d", v, buckets0)
	}
	if b, err := os.ReadFile(LockPath); err != nil || len(b) != 0 {
		t.Errorf("lock file after release: %q, %v", b, err)
	}
	if f, err := os.Open(LockPath); err != nil {
		t.Error(err)
	} else {
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			t.Errorf("lock still held: %v", err)
		}
		f.Close()
	}
	// Threads that joined the namespace are gone or back home; nothing else
	// of ours refers to it.
	want := fmt.Sprintf("net:[%d]", inode)
	eventually(t, "threads and descriptors released", func() string {
		var held []string
		tasks, _ := filepath.Glob("/proc/self/task/*/ns/net")
		for _, p := range tasks {
			if s, _ := os.Readlink(p); s == want {
				held = append(held, p)
			}
		}
		if fds := countFDs(t); fds != fds0 {
			held = append(held, fmt.Sprintf("%d descriptors open, %d before", fds, fds0))
		}
		if g := runtime.NumGoroutine(); g > gor0 {
			held = append(held, fmt.Sprintf("%d goroutines, %d before", g, gor0))
		}
		return strings.Join(held, "; ")
	})

	// A holder that died: its lock file names the value to restore.
	t.Run("recover", func(t *testing.T) {
		globalLock.sem <- struct{}{} // no other test of ours in between
		f, err := os.OpenFile(LockPath, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(f, "%s %d\n", MaxPath, max0)
		os.WriteFile(MaxPath, []byte(strconv.Itoa(max0-7)), 0)
		f.Close() // as the process's death would
		<-globalLock.sem
		t.Run("next", func(t *testing.T) { SetMax(t, max0-3) })
		if v, _ := ReadGlobal(MaxPath); v != max0 {
			t.Errorf("nf_conntrack_max %d after recovery, want %d", v, max0)
		}
	})
}

// settle waits until the Lab's statistics stop changing (packets queued on
// the loopback hold references that delay frees) and returns them.
func settle(t testing.TB, l *Lab) Stats {
	t.Helper()
	prev := mustStats(t, l)
	for range 200 {
		time.Sleep(20 * time.Millisecond)
		cur := mustStats(t, l)
		if cur == prev {
			return cur
		}
		prev = cur
	}
	t.Fatalf("statistics still changing after 4 s: %v", prev)
	return prev
}

// checkDumpTotal checks that a dump has as many entries as the count, and
// returns them by source.
func checkDumpTotal(t testing.TB, l *Lab, entries int64) map[netip.Addr]int {
	t.Helper()
	by, err := l.DumpBySource()
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, n := range by {
		total += n
	}
	if int64(total) != entries {
		t.Errorf("dump holds %d entries, the count says %d", total, entries)
	}
	return by
}

func countFDs(t testing.TB) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func eventually(t testing.TB, what string, cond func() string) {
	t.Helper()
	var last string
	for range 100 {
		if last = cond(); last == "" {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("%s: %s", what, last)
}

// openKmsg opens the kernel log positioned at its end, or returns -1. Raw
// descriptor: os.File would wait in the poller instead of returning EAGAIN.
func openKmsg(t testing.TB) int {
	fd, err := unix.Open("/dev/kmsg", unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Logf("no kernel log: %v", err)
		return -1
	}
	if _, err := unix.Seek(fd, 0, 2); err != nil {
		unix.Close(fd)
		t.Logf("no kernel log: %v", err)
		return -1
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// checkTableFullLog: kernels from 6.18 name the namespace in the table-full
// line, with the inode Inode() returns. The line is rate limited (10 per 5 s
// for all of net_ratelimit), so an absence is only logged.
func checkTableFullLog(t testing.TB, l *Lab, kmsg int) {
	if kmsg < 0 {
		return
	}
	var lines []string
	buf := make([]byte, 8192)
	for {
		n, err := unix.Read(kmsg, buf)
		if err == unix.EPIPE || err == unix.EINTR {
			continue // overwritten records
		}
		if err != nil || n <= 0 {
			break
		}
		rec := string(buf[:n])
		if i := strings.IndexByte(rec, ';'); i >= 0 {
			rec = rec[i+1:]
		}
		if strings.Contains(rec, "table full") {
			lines = append(lines, strings.TrimSpace(strings.SplitN(rec, "\n", 2)[0]))
		}
	}
	want := fmt.Sprintf("table full in netns %d,", l.Inode())
	named := slices.ContainsFunc(lines, func(s string) bool { return strings.Contains(s, want) })
	t.Logf("kernel log: %d table-full lines during the flood, naming this lab's inode: %v (e.g. %q)", len(lines), named, first(lines))
	if len(lines) > 0 && strings.Contains(lines[0], "in netns") && !named {
		t.Errorf("the kernel named other namespaces than %d: %q", l.Inode(), lines)
	}
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}
