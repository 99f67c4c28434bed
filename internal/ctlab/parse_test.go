package ctlab

import (
	"encoding/binary"
	"net/netip"
	"strings"
	"testing"
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
	want := Stats{Source: "procfs", CPUs: 2, Entries: 0x4c, Found: 2, Invalid: 4, Insert: 1, InsertFailed: 0x33,
		Drop: 0x300, EarlyDrop: 11, Error: 1, SearchRestart: 8, ClashResolve: 3, ChainTooLong: 0x30,
		HasClashResolve: true, HasChainTooLong: true}
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
	a := Stats{Entries: 5, Drop: 10, EarlyDrop: 3, ChainTooLong: 7, Source: "procfs"}
	b := Stats{Entries: 8, Drop: 4, EarlyDrop: 3, ChainTooLong: 1}
	d := a.Sub(b)
	if d.Entries != -3 || d.Drop != 6 || d.EarlyDrop != 0 || d.ChainTooLong != 6 || d.Source != "procfs" {
		t.Fatalf("%+v", d)
	}
}

// nla builds a netlink attribute.
func nla(typ uint16, val []byte) []byte {
	b := make([]byte, 4, 4+len(val)+3)
	binary.NativeEndian.PutUint16(b[0:], uint16(4+len(val)))
	binary.NativeEndian.PutUint16(b[2:], typ)
	b = append(b, val...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

func TestParseEntry(t *testing.T) {
	const nested = 0x8000
	src, dst := netip.MustParseAddr("127.1.2.3"), netip.MustParseAddr("127.0.0.1")
	tuple := func(s, d netip.Addr, sp, dp uint16, v6 bool) []byte {
		st, dt := uint16(ctaIPv4Src), uint16(ctaIPv4Dst)
		if v6 {
			st, dt = ctaIPv6Src, ctaIPv6Dst
		}
		return cat(
			nla(ctaTupleIP|nested, cat(nla(st, s.AsSlice()), nla(dt, d.AsSlice()))),
			nla(ctaTupleProto|nested, cat(nla(ctaProtoNum, []byte{17}), nla(ctaProtoSrcPort, be16(sp)), nla(ctaProtoDstPort, be16(dp)))),
		)
	}
	msg := cat(
		nla(ctaTupleOrig|nested, tuple(src, dst, 4242, 9, false)),
		nla(2|nested, tuple(dst, src, 9, 4242, false)), // reply tuple: ignored
		nla(ctaStatus, binary.BigEndian.AppendUint32(nil, StatusConfirmed|StatusAssured)),
		nla(7, binary.BigEndian.AppendUint32(nil, 30)), // timeout: ignored
	)
	e, err := parseEntry(msg)
	if err != nil {
		t.Fatal(err)
	}
	want := Entry{Proto: 17, Src: netip.AddrPortFrom(src, 4242), Dst: netip.AddrPortFrom(dst, 9), Status: StatusConfirmed | StatusAssured}
	if e != want || !e.Assured() {
		t.Fatalf("got %+v, want %+v", e, want)
	}

	v6 := netip.IPv6Loopback()
	e, err = parseEntry(nla(ctaTupleOrig|nested, tuple(v6, v6, 1, 2, true)))
	if err != nil || e.Src != netip.AddrPortFrom(v6, 1) || e.Dst != netip.AddrPortFrom(v6, 2) {
		t.Fatalf("IPv6: %+v, %v", e, err)
	}

	if _, err := parseEntry([]byte{200, 0, 1, 0}); err == nil {
		t.Fatal("bad attribute length accepted")
	}
}

func TestParseNetlinkReplies(t *testing.T) {
	c := &nlConn{seq: 7}
	msg := func(typ uint16, seq uint32, body []byte) []byte {
		b := make([]byte, 16, 16+len(body))
		binary.NativeEndian.PutUint32(b[0:], uint32(16+len(body)))
		binary.NativeEndian.PutUint16(b[4:], typ)
		binary.NativeEndian.PutUint32(b[8:], seq)
		return append(b, body...)
	}
	stat := func(cpu uint16, drop uint32) []byte {
		return cat([]byte{0, 0}, be16(cpu), nla(ctaStatsDrop, binary.BigEndian.AppendUint32(nil, drop)))
	}
	var cpus []uint16
	var drops int64
	fn := func(res uint16, attrs []byte) error {
		cpus = append(cpus, res)
		return forEachAttr(attrs, func(typ uint16, val []byte) error {
			n, err := be32(val)
			drops += n
			return err
		})
	}
	buf := cat(msg(0x104, 6, stat(9, 1000)), msg(0x104, 7, stat(0, 5)), msg(0x104, 7, stat(1, 6)))
	done, err := c.parse(buf, fn)
	if err != nil || done {
		t.Fatalf("done %v, err %v", done, err)
	}
	done, err = c.parse(msg(3, 7, make([]byte, 4)), fn) // NLMSG_DONE
	if err != nil || !done || len(cpus) != 2 || cpus[1] != 1 || drops != 11 {
		t.Fatalf("done %v, err %v, cpus %v, drops %d", done, err, cpus, drops)
	}
	errno := binary.NativeEndian.AppendUint32(nil, uint32(0xffffffff-95+1)) // -EOPNOTSUPP
	if _, err := c.parse(msg(2, 7, errno), fn); err == nil || !strings.Contains(err.Error(), "not supported") {
		t.Fatalf("error reply: %v", err)
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
