//go:build privileged

package ctlab

import (
	"encoding/binary"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/cttrace/cttrace/internal/testbed"
)

// floodTuple is what makes a flow new: source, ports, protocol.
type floodTuple struct {
	src          netip.Addr
	sport, dport uint16
}

// genTuples runs a generator over [0, n) and returns the tuples it built,
// checking each packet's checksums on the way.
func genTuples(t *testing.T, g *floodGen, n int, seen map[floodTuple]int) {
	t.Helper()
	for i := range n {
		g.build(i)
		p := g.pkt
		var tu floodTuple
		var l4 []byte
		var pseudo uint32
		if g.v6 {
			tu.src = netip.AddrFrom16([16]byte(p[8:24]))
			l4 = p[40:]
			pseudo = sum16(p[8:40], 0)
			if !FloodPrefix6.Contains(tu.src) {
				t.Fatalf("packet %d: source %v outside %v", i, tu.src, FloodPrefix6)
			}
		} else {
			tu.src = netip.AddrFrom4([4]byte(p[12:16]))
			l4 = p[20:]
			pseudo = sum16(p[12:20], 0)
			a := tu.src.As4()
			if a[0] != 127 || (g.random && (a[1] == 0 || a[1] == 253 || a[1] == 254)) {
				t.Fatalf("packet %d: source %v in a range the Lab reserves", i, tu.src)
			}
		}
		tu.sport, tu.dport = binary.BigEndian.Uint16(l4[0:]), binary.BigEndian.Uint16(l4[2:])
		if tu.sport == 0 || tu.dport == 0 {
			t.Fatalf("packet %d: port 0 in %v", i, tu)
		}
		if g.tcp || g.v6 {
			proto := uint32(17)
			if g.tcp {
				proto = 6
			}
			if c := checksum(sum16(l4, pseudo+proto+uint32(len(l4)))); c != 0 {
				t.Fatalf("packet %d: layer-4 checksum does not verify (%#x)", i, c)
			}
		}
		if g.tcp && l4[13] != 0x02 {
			t.Fatalf("packet %d: TCP flags %#x, want SYN", i, l4[13])
		}
		if j, dup := seen[tu]; dup {
			t.Fatalf("packet %d repeats packet %d's tuple %v", i, j, tu)
		}
		seen[tu] = i
	}
}

// floodScale shrinks packet counts under emulation (the VM tier), where
// everything is many times slower; the assertions stay exact.
func floodScale(n int) int {
	if testbed.Tier() == testbed.VM {
		return n / 10
	}
	return n
}

// TestFloodTuples: every packet of a flood, and of the next flood in the
// same Lab, is a distinct tuple with valid checksums; Seed reproduces.
func TestFloodTuples(t *testing.T) {
	cases := []FloodSpec{
		{Packets: 150000}, // 1 source: the destination port hops
		{Packets: 100000, Sources: 1000, Proto: "tcp-syn"}, // pool, TCP
		{Packets: 200000, Random: true, Seed: 7},           // fresh random IPv4
		{Packets: 50000, Random: true, Sources: 300},       // random pool
		{Packets: 50000, IPv6: true, Sources: 70000},       // IPv6 pool past a 16-bit boundary
		{Packets: 50000, IPv6: true, Random: true, Proto: "tcp-syn"},
	}
	for _, spec := range cases {
		seen := map[floodTuple]int{}
		base := uint64(0)
		for range 2 { // two floods in a row, as Flood reserves them
			g, err := newFloodGen(spec)
			if err != nil {
				t.Fatal(err)
			}
			g.base = base
			if g.fresh {
				base += uint64(g.n)
			} else {
				base += uint64((g.n + g.sources - 1) / g.sources)
			}
			genTuples(t, g, g.n, seen)
		}
		distinct := map[netip.Addr]bool{}
		for tu := range seen {
			distinct[tu.src] = true
		}
		want := min(spec.Sources, spec.Packets) // each flood starts at the pool's first source
		if want == 0 {
			want = 1
			if spec.Random {
				want = 2 * spec.Packets
			}
		}
		if len(distinct) != want {
			t.Errorf("%+v: %d distinct sources, want %d", spec, len(distinct), want)
		}
	}

	// Same seed, same sources; another seed, others.
	a, _ := newFloodGen(FloodSpec{Packets: 10, Random: true, Seed: 1})
	b, _ := newFloodGen(FloodSpec{Packets: 10, Random: true, Seed: 1})
	c, _ := newFloodGen(FloodSpec{Packets: 10, Random: true, Seed: 2})
	a.build(3)
	b.build(3)
	c.build(3)
	if string(a.pkt) != string(b.pkt) || string(a.pkt) == string(c.pkt) {
		t.Errorf("Seed does not decide the packets: %x %x %x", a.pkt, b.pkt, c.pkt)
	}

	for _, bad := range []FloodSpec{
		{Proto: "icmp"},
		{Dst: netip.MustParseAddrPort("10.0.0.1:9")},
		{IPv6: true, Dst: netip.MustParseAddrPort("127.0.0.1:9")},
		{SourceBase: netip.MustParseAddr("127.255.255.255"), Sources: 2},
		{SourceBase: netip.MustParseAddr("10.0.0.1")},
		{Random: true, Sources: 20_000_000},
	} {
		if _, err := newFloodGen(bad); err == nil {
			t.Errorf("%+v: no error", bad)
		}
	}
}

// TestFloodAdmitted: with room in the table every packet is admitted and is
// a new entry (none repeats an earlier one, also across floods).
func TestFloodAdmitted(t *testing.T) {
	testbed.RequireRoot(t)
	const perFlood = 3000
	specs := []FloodSpec{
		{Packets: perFlood, Sources: 1},
		{Packets: perFlood, Sources: 1}, // the same source again: new ports
		{Packets: perFlood, Random: true, Seed: 3},
		{Packets: perFlood, Random: true, Sources: 10},
		{Packets: perFlood, IPv6: true, Sources: 7},
		{Packets: perFlood, IPv6: true, Random: true},
	}
	l := New(t)
	if max, err := ReadGlobal(MaxPath); err != nil {
		t.Fatal(err)
	} else if max < 4*perFlood*len(specs) {
		SetMax(t, 4*perFlood*len(specs))
	}
	s0 := settle(t, l)
	sent := 0
	for _, spec := range specs {
		res, err := l.Flood(spec)
		if err != nil {
			t.Fatal(err)
		}
		if res.Sent != perFlood || res.Refused != 0 {
			t.Fatalf("%+v: %+v, want all %d sent", spec, res, perFlood)
		}
		sent += res.Sent
	}
	d := settle(t, l).Sub(s0)
	if d.Entries != int64(sent) || d.Drop != 0 || d.InsertFailed != 0 || d.EarlyDrop != 0 {
		t.Errorf("%d flows admitted, but %v", sent, d)
	}
}

// TestFloodRefused: into a table held full, every packet is refused and
// Refused equals the kernel's drop delta, per protocol, family and source
// pattern.
func TestFloodRefused(t *testing.T) {
	testbed.RequireRoot(t)
	const maxN = 64
	l := New(t)
	SetMax(t, maxN)
	if err := l.HoldEstablished(maxN); err != nil {
		t.Fatal(err)
	}
	s := settle(t, l)
	if s.Entries != maxN {
		t.Fatalf("after HoldEstablished(%d): %d entries", maxN, s.Entries)
	}
	for _, tc := range []struct {
		name string
		spec FloodSpec
	}{
		{"udp v4 random", FloodSpec{Packets: floodScale(100000), Random: true, Seed: 1}},
		{"tcp-syn v4 distinct", FloodSpec{Proto: "tcp-syn", Packets: floodScale(50000), Sources: 1000}},
		{"udp v6", FloodSpec{IPv6: true, Packets: floodScale(50000), Sources: 50}},
		{"tcp-syn v6 random", FloodSpec{IPv6: true, Proto: "tcp-syn", Packets: floodScale(20000), Random: true}},
	} {
		res, err := l.Flood(tc.spec)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		s1 := settle(t, l)
		d := s1.Sub(s)
		s = s1
		t.Logf("%s: %+v (%.0f packets/s); kernel: %v", tc.name, res, float64(res.Sent+res.Refused)/res.Elapsed.Seconds(), d)
		if res.Sent != 0 || res.Refused != tc.spec.Packets {
			t.Errorf("%s: %d sent, %d refused; want 0 and %d", tc.name, res.Sent, res.Refused, tc.spec.Packets)
		}
		if d.Drop != int64(res.Refused) {
			t.Errorf("%s: %d refused, drop +%d", tc.name, res.Refused, d.Drop)
		}
		if d.Entries != 0 || d.EarlyDrop != 0 {
			t.Errorf("%s: unexpected change: %v", tc.name, d)
		}
	}

	t.Run("memory", func(t *testing.T) {
		// A million fresh random sources (100,000 under emulation): no
		// state per source.
		n := floodScale(1_000_000)
		var m0, m1 runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m0)
		res, err := l.Flood(FloodSpec{Packets: n, Random: true, Seed: 2})
		runtime.ReadMemStats(&m1)
		if err != nil {
			t.Fatal(err)
		}
		alloc := m1.TotalAlloc - m0.TotalAlloc
		t.Logf("%d random sources: %+v, %d bytes allocated", n, res, alloc)
		if res.Refused != n {
			t.Errorf("%d of %d refused", res.Refused, n)
		}
		if alloc > 256<<10 {
			t.Errorf("%d bytes allocated for %d sources: state per packet or source?", alloc, n)
		}
		d := settle(t, l).Sub(s)
		if d.Drop != int64(res.Refused) {
			t.Errorf("%d refused, drop +%d", res.Refused, d.Drop)
		}
	})

	t.Run("rate", func(t *testing.T) {
		if testbed.Tier() == testbed.VM {
			t.Skip("timing under emulation is not native: pacing is checked on the host")
		}
		const rate, n = 20000, 10000 // 0.5 s
		start := time.Now()
		res, err := l.Flood(FloodSpec{Packets: n, Rate: rate, Random: true, Seed: 4})
		wall := time.Since(start)
		if err != nil {
			t.Fatal(err)
		}
		got := float64(res.Refused+res.Sent) / res.Elapsed.Seconds()
		t.Logf("target %d/s: %+v: %.0f packets/s (%v end to end)", rate, res, got, wall.Round(time.Millisecond))
		if got < rate*0.75 || got > rate*1.25 {
			t.Errorf("rate %.0f/s, want %d/s ± 25%%", got, rate)
		}
		if wall < 375*time.Millisecond || wall > 625*time.Millisecond {
			t.Errorf("took %v end to end, want 0.5 s ± 25%%", wall)
		}
		// Evenly spread, not one burst: a tenth of the packets takes a
		// tenth of the time.
		start = time.Now()
		if _, err := l.Flood(FloodSpec{Packets: n / 10, Rate: rate, Random: true, Seed: 5}); err != nil {
			t.Fatal(err)
		}
		if tenth := time.Since(start); tenth < 35*time.Millisecond || tenth > 65*time.Millisecond+10*time.Millisecond {
			t.Errorf("%d packets at %d/s took %v, want about 50 ms", n/10, rate, tenth)
		}
	})
}
