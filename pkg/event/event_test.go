package event

import (
	"encoding/binary"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestReasonFromKernel(t *testing.T) {
	tests := []struct {
		in   uint32
		want Reason
	}{
		{0, ""},
		{1, ReasonTableFull},
		{2, ReasonAllocFailed},
		{3, ReasonEarlyDrop},
		{4, ReasonInsertFailed},
		{5, ReasonInsert},
		{6, ReasonDelete},
		{7, ReasonClashResolved},
		{8, ReasonGCEvict},
		{9, ""}, // CT_EV_MAX
		{1 << 31, ""},
	}
	for _, tt := range tests {
		if got := ReasonFromKernel(tt.in); got != tt.want {
			t.Errorf("ReasonFromKernel(%d) = %q, want %q", tt.in, got, tt.want)
		}
		if got := ReasonFromKernel(tt.in).Valid(); got != (tt.want != "") {
			t.Errorf("ReasonFromKernel(%d).Valid() = %v", tt.in, got)
		}
	}
}

func TestReasonsAndDrops(t *testing.T) {
	want := []Reason{"table_full", "alloc_failed", "early_drop", "insert_failed", "insert", "delete", "clash_resolved", "gc_evict"}
	if got := Reasons(); !reflect.DeepEqual(got, want) {
		t.Errorf("Reasons() = %v, want %v", got, want)
	}
	streamed := []Reason{"table_full", "alloc_failed", "early_drop", "gc_evict", "insert_failed"}
	if got := RefusalsAndEvictions(); !reflect.DeepEqual(got, streamed) {
		t.Errorf("RefusalsAndEvictions() = %v, want %v", got, streamed)
	}
	for _, r := range want {
		isDrop := r == "table_full" || r == "alloc_failed" || r == "insert_failed"
		isEviction := r == "early_drop" || r == "gc_evict"
		if r.IsDrop() != isDrop || r.IsEviction() != isEviction {
			t.Errorf("%s: IsDrop %v, IsEviction %v; want %v, %v", r, r.IsDrop(), r.IsEviction(), isDrop, isEviction)
		}
	}
	// Callers may change what they get without changing the package's.
	Reasons()[0] = "x"
	if Reasons()[0] != ReasonTableFull {
		t.Error("Reasons() shares its backing array")
	}
}

func TestParseReason(t *testing.T) {
	tests := []struct {
		in      string
		want    Reason
		wantErr bool
	}{
		{"table_full", ReasonTableFull, false},
		{"Early_Drop", ReasonEarlyDrop, false},
		{" clash_resolved ", ReasonClashResolved, false},
		{"insert", ReasonInsert, false},
		{"", "", true},
		{"table-full", "", true},
		{"drop", "", true},
	}
	for _, tt := range tests {
		got, err := ParseReason(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseReason(%q) = %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.wantErr)
			continue
		}
		if err != nil {
			for _, r := range Reasons() {
				if !strings.Contains(err.Error(), string(r)) {
					t.Errorf("ParseReason(%q) error %q does not list %s", tt.in, err, r)
				}
			}
		}
	}
}

func TestDetailFromKernel(t *testing.T) {
	want := []Detail{"", "evicted_for_new_flow", "evicted_by_gc", "clash", "chain_too_long", "dying", "expired", "netlink", "other"}
	for i, w := range want {
		if got := DetailFromKernel(uint8(i)); got != w {
			t.Errorf("DetailFromKernel(%d) = %q, want %q", i, got, w)
		}
	}
	if got := DetailFromKernel(9); got != DetailNone {
		t.Errorf("DetailFromKernel(9) = %q, want none", got)
	}
	if got := Details(); !reflect.DeepEqual(got, want) {
		t.Errorf("Details() = %q", got)
	}
}

func TestConfidenceFromKernel(t *testing.T) {
	for in, want := range map[uint8]Confidence{0: ConfidenceExact, 1: ConfidenceInferred, 7: ConfidenceInferred} {
		if got := ConfidenceFromKernel(in); got != want {
			t.Errorf("ConfidenceFromKernel(%d) = %q, want %q", in, got, want)
		}
	}
}

// portBE gives the uint16 the generated struct holds for a port the kernel
// stored in network byte order: its two big-endian bytes read in host order.
func portBE(port uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], port)
	return binary.NativeEndian.Uint16(b[:])
}

func addr16(s string) [16]byte {
	a := netip.MustParseAddr(s)
	if a.Is4() {
		var b [16]byte
		v4 := a.As4()
		copy(b[:], v4[:])
		// Garbage past the first 4 bytes must be ignored for ipv4.
		b[4], b[15] = 0xff, 0xee
		return b
	}
	return a.As16()
}

func TestTupleFromKernel(t *testing.T) {
	tests := []struct {
		name          string
		family, proto uint8
		saddr, daddr  string
		sport, dport  uint16
		want          Tuple
		wantOK        bool
	}{
		{
			name: "ipv4 udp", family: 2, proto: 17,
			saddr: "127.1.0.1", daddr: "127.0.0.1", sport: 40000, dport: 9,
			want: Tuple{Family: "ipv4", Proto: 17,
				Src: netip.MustParseAddrPort("127.1.0.1:40000"),
				Dst: netip.MustParseAddrPort("127.0.0.1:9")},
			wantOK: true,
		},
		{
			name: "ipv6 tcp", family: 10, proto: 6,
			saddr: "2001:db8::1", daddr: "2001:db8::2", sport: 443, dport: 65535,
			want: Tuple{Family: "ipv6", Proto: 6,
				Src: netip.MustParseAddrPort("[2001:db8::1]:443"),
				Dst: netip.MustParseAddrPort("[2001:db8::2]:65535")},
			wantOK: true,
		},
		{
			name: "ipv6 keeps a mapped address as the kernel gave it", family: 10, proto: 17,
			saddr: "::ffff:10.0.0.1", daddr: "::1", sport: 1, dport: 256,
			want: Tuple{Family: "ipv6", Proto: 17,
				Src: netip.MustParseAddrPort("[::ffff:10.0.0.1]:1"),
				Dst: netip.MustParseAddrPort("[::1]:256")},
			wantOK: true,
		},
		{
			name: "icmp has no ports", family: 2, proto: 1,
			saddr: "10.0.0.1", daddr: "10.0.0.2", sport: 0x1234, dport: 0x0800,
			want: Tuple{Family: "ipv4", Proto: 1,
				Src: netip.MustParseAddrPort("10.0.0.1:0"),
				Dst: netip.MustParseAddrPort("10.0.0.2:0")},
			wantOK: true,
		},
		{
			name: "icmpv6 has no ports", family: 10, proto: 58,
			saddr: "fe80::1", daddr: "ff02::1", sport: 7, dport: 0x8000,
			want: Tuple{Family: "ipv6", Proto: 58,
				Src: netip.MustParseAddrPort("[fe80::1]:0"),
				Dst: netip.MustParseAddrPort("[ff02::1]:0")},
			wantOK: true,
		},
		{name: "no tuple", family: 0, proto: 17, saddr: "10.0.0.1", daddr: "10.0.0.2"},
		{name: "unknown family", family: 7, proto: 17, saddr: "10.0.0.1", daddr: "10.0.0.2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := TupleFromKernel(tt.family, tt.proto, addr16(tt.saddr), addr16(tt.daddr), portBE(tt.sport), portBE(tt.dport))
			if ok != tt.wantOK || got != tt.want {
				t.Errorf("got %+v, %v; want %+v, %v", got, ok, tt.want, tt.wantOK)
			}
			if ok != got.Valid() {
				t.Errorf("Valid() = %v with ok %v", got.Valid(), ok)
			}
		})
	}
}

// TestNetworkToHostLittleEndian pins the byte swap down with a literal on
// the hosts cttrace runs on, in case portBE and the code share a mistake.
func TestNetworkToHostLittleEndian(t *testing.T) {
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("big-endian host")
	}
	// Port 40000 = 0x9c40 is stored as 9c 40; read little-endian: 0x409c.
	if got := networkToHost(0x409c); got != 40000 {
		t.Errorf("networkToHost(0x409c) = %d, want 40000", got)
	}
	if got := networkToHost(0x0900); got != 9 {
		t.Errorf("networkToHost(0x0900) = %d, want 9", got)
	}
}

func TestTupleString(t *testing.T) {
	tests := []struct {
		t    Tuple
		want string
	}{
		{Tuple{}, "-"},
		{Tuple{Family: "ipv4", Proto: 17, Src: netip.MustParseAddrPort("10.0.0.1:53"), Dst: netip.MustParseAddrPort("10.0.0.2:5353")},
			"udp 10.0.0.1:53 → 10.0.0.2:5353"},
		{Tuple{Family: "ipv6", Proto: 6, Src: netip.MustParseAddrPort("[2001:db8::1]:443"), Dst: netip.MustParseAddrPort("[::1]:80")},
			"tcp [2001:db8::1]:443 → [::1]:80"},
		{Tuple{Family: "ipv6", Proto: 58, Src: netip.MustParseAddrPort("[fe80::1]:0"), Dst: netip.MustParseAddrPort("[ff02::1]:0")},
			"icmpv6 fe80::1 → ff02::1"},
		{Tuple{Family: "ipv4", Proto: 89, Src: netip.MustParseAddrPort("10.0.0.1:0"), Dst: netip.MustParseAddrPort("224.0.0.5:0")},
			"89 10.0.0.1:0 → 224.0.0.5:0"},
	}
	for _, tt := range tests {
		if got := tt.t.String(); got != tt.want {
			t.Errorf("String() = %q, want %q", got, tt.want)
		}
	}
}

func TestProtoNames(t *testing.T) {
	names := map[uint8]string{1: "icmp", 6: "tcp", 17: "udp", 33: "dccp", 47: "gre", 58: "icmpv6", 132: "sctp", 136: "udplite", 0: "0", 89: "89", 255: "255"}
	for p, n := range names {
		if got := ProtoName(p); got != n {
			t.Errorf("ProtoName(%d) = %q, want %q", p, got, n)
		}
		if got := (Tuple{Proto: p}).ProtoName(); got != n {
			t.Errorf("Tuple.ProtoName(%d) = %q, want %q", p, got, n)
		}
		if got, err := ParseProto(n); err != nil || got != p {
			t.Errorf("ParseProto(%q) = %d, %v; want %d", n, got, err, p)
		}
	}
	for in, want := range map[string]uint8{"TCP": 6, " udp": 17, "17": 17} {
		if got, err := ParseProto(in); err != nil || got != want {
			t.Errorf("ParseProto(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "tcp6", "256", "-1", "0x11", "ip"} {
		if got, err := ParseProto(bad); err == nil {
			t.Errorf("ParseProto(%q) = %d, want an error", bad, got)
		} else if !strings.Contains(err.Error(), "udplite") {
			t.Errorf("ParseProto(%q) error %q does not list the names", bad, err)
		}
	}
}

func TestStatusNames(t *testing.T) {
	tests := []struct {
		in   uint32
		want []string
	}{
		{0, []string{}},
		{1 << 2, []string{"ASSURED"}},
		{1<<1 | 1<<2 | 1<<3, []string{"SEEN_REPLY", "ASSURED", "CONFIRMED"}},
		{1<<0 | 1<<9 | 1<<12 | 1<<15, []string{"EXPECTED", "DYING", "NAT_CLASH", "HW_OFFLOAD"}},
		{1<<4 | 1<<5 | 1<<6 | 1<<7 | 1<<8 | 1<<10 | 1<<11 | 1<<13 | 1<<14,
			[]string{"SRC_NAT", "DST_NAT", "SEQ_ADJUST", "SRC_NAT_DONE", "DST_NAT_DONE", "FIXED_TIMEOUT", "TEMPLATE", "HELPER", "OFFLOAD"}},
		{1<<16 | 1<<31, []string{"BIT16", "BIT31"}},
	}
	for _, tt := range tests {
		if got := StatusNames(tt.in); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("StatusNames(%#x) = %q, want %q", tt.in, got, tt.want)
		}
		e := Event{Status: tt.in}
		if got := e.StatusNames(); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("Event.StatusNames(%#x) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestTCPStateName(t *testing.T) {
	want := []string{"NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2"}
	for i, w := range want {
		if got := TCPStateName(uint8(i)); got != w {
			t.Errorf("TCPStateName(%d) = %q, want %q", i, got, w)
		}
	}
	if got := TCPStateName(10); got != "10" {
		t.Errorf("TCPStateName(10) = %q", got)
	}
	tcp := Event{Flow: Tuple{Family: "ipv4", Proto: ProtoTCP}, TCPState: 3}
	if got := tcp.TCPStateName(); got != "ESTABLISHED" {
		t.Errorf("tcp event state = %q", got)
	}
	udp := Event{Flow: Tuple{Family: "ipv4", Proto: ProtoUDP}, TCPState: 3}
	if got := udp.TCPStateName(); got != "" {
		t.Errorf("udp event state = %q, want none", got)
	}
}

func TestClockWall(t *testing.T) {
	c, err := NewClock()
	if err != nil {
		t.Fatal(err)
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		t.Fatal(err)
	}
	got := c.Wall(uint64(ts.Nano()))
	if d := time.Since(got); d < -50*time.Millisecond || d > 50*time.Millisecond {
		t.Errorf("Wall(now) is %v away from time.Now()", d)
	}
	// A timestamp one second later is one second later on the wall.
	if d := c.Wall(uint64(ts.Nano()) + 1e9).Sub(got); d != time.Second {
		t.Errorf("Wall difference = %v, want 1s", d)
	}
}

func TestJiffyDuration(t *testing.T) {
	j, err := JiffyDuration()
	if err != nil {
		t.Fatal(err)
	}
	// CONFIG_HZ is 100, 250, 300 or 1000.
	if j < time.Millisecond || j > 10*time.Millisecond {
		t.Errorf("JiffyDuration() = %v, want 1ms..10ms", j)
	}
	tests := []struct {
		jiffies int32
		jiffy   time.Duration
		want    time.Duration
	}{
		{0, 4 * time.Millisecond, 0},
		{250, 4 * time.Millisecond, time.Second},
		{-30, time.Millisecond, -30 * time.Millisecond},
		{432000 * 100, 10 * time.Millisecond, 432000 * time.Second}, // TCP established, 5 days at HZ=100
	}
	for _, tt := range tests {
		if got := TimeoutFromJiffies(tt.jiffies, tt.jiffy); got != tt.want {
			t.Errorf("TimeoutFromJiffies(%d, %v) = %v, want %v", tt.jiffies, tt.jiffy, got, tt.want)
		}
	}
}
