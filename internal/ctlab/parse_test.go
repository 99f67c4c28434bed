package ctlab

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"

	"github.com/cttrace/cttrace/pkg/table"
)

func TestParseProcStats(t *testing.T) {
	// 6.x layout (the 6.18 development machine), two CPUs.
	const v6x = `entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart
0000004c  00000001 00000002 00000000 00000003 00000000 00000000 00000010 00000000 00000011 00000100 00000005 00000001  00000000 00000000 00000000 00000007
0000004c  00000002 00000000 00000000 00000001 00000000 00000000 00000020 00000001 00000022 00000200 00000006 00000000  00000000 00000000 00000000 00000001
`
	s, err := parseProcStats(strings.NewReader(v6x))
	if err != nil {
		t.Fatal(err)
	}
	want := Stats{Source: "procfs", Stats: table.Stats{CPUs: 2, Entries: 0x4c, Found: 2, Invalid: 4, Insert: 1, InsertFailed: 0x33,
		Drop: 0x300, EarlyDrop: 11, Error: 1, SearchRestart: 8, ClashResolve: 3, ChainTooLong: 0x30,
		HasClashResolve: true, HasChainTooLong: true}}
	if s != want {
		t.Fatalf("got  %+v\nwant %+v", s, want)
	}

	// 5.10 layout: no clashres or chainlength, legacy columns.
	const v510 = `entries  searched found new invalid ignore delete delete_list insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart
00000003  00000000 00000001 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000009 00000000 00000000  00000000 00000000 00000000 00000000
`
	s, err = parseProcStats(strings.NewReader(v510))
	if err != nil {
		t.Fatal(err)
	}
	if s.Entries != 3 || s.Drop != 9 || s.Found != 1 || s.HasChainTooLong || s.HasClashResolve || s.CPUs != 1 {
		t.Fatalf("5.10 layout: %+v", s)
	}

	for _, bad := range []string{"", "entries found\n", "entries found\n1 2 3\n", "entries found\nzz 1\n"} {
		if _, err := parseProcStats(strings.NewReader(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestStatsSub(t *testing.T) {
	a := Stats{Stats: table.Stats{Entries: 5, Drop: 10, EarlyDrop: 3, ChainTooLong: 7}, Source: "procfs"}
	b := Stats{Stats: table.Stats{Entries: 8, Drop: 4, EarlyDrop: 3, ChainTooLong: 1}}
	d := a.Sub(b)
	if d.Entries != -3 || d.Drop != 6 || d.EarlyDrop != 0 || d.ChainTooLong != 6 || d.Source != "procfs" {
		t.Fatalf("%+v", d)
	}
}

func TestUDP6Checksum(t *testing.T) {
	p := make([]byte, 48)
	buildUDP6(p, netip.IPv6Loopback(), netip.IPv6Loopback(), 1234, 9)
	// Summing the pseudo-header and the datagram, checksum included, gives 0xffff.
	sum := uint32(0)
	for i := 8; i < 40; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(p[i:]))
	}
	sum += 8 + 17
	for i := 40; i < 48; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(p[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	if sum != 0xffff || p[0]>>4 != 6 || binary.BigEndian.Uint16(p[40:]) != 1234 {
		t.Fatalf("sum %#x, packet % x", sum, p)
	}

	p4 := make([]byte, 28)
	buildUDP4(p4, netip.MustParseAddr("127.1.0.1"), netip.MustParseAddr("127.0.0.1"), 5, 9)
	if p4[0] != 0x45 || p4[9] != 17 || binary.BigEndian.Uint16(p4[2:]) != 28 || binary.BigEndian.Uint16(p4[24:]) != 8 || p4[12] != 127 || p4[13] != 1 {
		t.Fatalf("IPv4 packet % x", p4)
	}
}

func TestPortReservation(t *testing.T) {
	l := &Lab{ports: map[flowKey]int{}}
	src, dst := netip.MustParseAddr("127.1.0.1"), netip.MustParseAddrPort("127.0.0.1:9")
	if p, err := l.reserve(src, dst, 10); err != nil || p != 1 {
		t.Fatalf("first reservation: %d, %v", p, err)
	}
	if p, err := l.reserve(src, dst, 65525); err != nil || p != 11 {
		t.Fatalf("second reservation: %d, %v", p, err)
	}
	if _, err := l.reserve(src, dst, 1); err == nil {
		t.Fatal("65536th flow reserved")
	}
	if p, err := l.reserve(src, netip.MustParseAddrPort("127.0.0.1:10"), 1); err != nil || p != 1 {
		t.Fatalf("other destination: %d, %v", p, err)
	}

	plan, err := l.reservePool(FillSourceBase, FillDst, 70000)
	if err != nil || len(plan) != 2 || plan[0].left != 65535 || plan[1].left != 4465 || plan[1].src != FillSourceBase.Next() {
		t.Fatalf("pool: %+v, %v", plan, err)
	}
	plan, err = l.reservePool(FillSourceBase, FillDst, 10)
	if err != nil || len(plan) != 1 || plan[0].src != FillSourceBase.Next() || plan[0].port != 4466 {
		t.Fatalf("pool continues where it stopped: %+v, %v", plan, err)
	}
}

func TestCheckFlow(t *testing.T) {
	ok := [][2]string{{"127.1.2.3", "127.0.0.1:9"}, {"::1", "[::1]:9"}}
	bad := [][2]string{{"10.0.0.1", "127.0.0.1:9"}, {"127.0.0.1", "10.0.0.1:9"}, {"127.0.0.1", "127.0.0.1:0"},
		{"::1", "127.0.0.1:9"}, {"::2", "[::1]:9"}}
	for _, c := range ok {
		if err := checkFlow(netip.MustParseAddr(c[0]), netip.MustParseAddrPort(c[1])); err != nil {
			t.Errorf("%v: %v", c, err)
		}
	}
	for _, c := range bad {
		if err := checkFlow(netip.MustParseAddr(c[0]), netip.MustParseAddrPort(c[1])); err == nil {
			t.Errorf("%v accepted", c)
		}
	}
}
