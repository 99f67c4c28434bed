package event

import (
	"net/netip"
	"strings"
	"testing"
)

func flowEvent(reason Reason, netns uint32, proto uint8, src, dst string) *Event {
	s, d := netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst)
	fam := FamilyIPv4
	if s.Addr().Is6() {
		fam = FamilyIPv6
	}
	return &Event{Reason: reason, Netns: NetnsOf(netns), Flow: Tuple{Family: fam, Proto: proto, Src: s, Dst: d}}
}

func prefixes(ss ...string) []netip.Prefix {
	var ps []netip.Prefix
	for _, s := range ss {
		p, err := ParseCIDR(s)
		if err != nil {
			panic(err)
		}
		ps = append(ps, p)
	}
	return ps
}

func TestFilterMatch(t *testing.T) {
	v4 := flowEvent(ReasonTableFull, 4026531840, ProtoUDP, "10.1.2.3:40000", "192.168.0.1:53")
	v6 := flowEvent(ReasonInsertFailed, 4026532500, ProtoTCP, "[2001:db8::5]:443", "[2001:db8:1::1]:80")
	mapped := flowEvent(ReasonEarlyDrop, 4026531840, ProtoTCP, "[::ffff:10.9.9.9]:1000", "[::ffff:172.16.0.1]:22")
	gre := flowEvent(ReasonTableFull, 1, ProtoGRE, "10.0.0.1:0", "10.0.0.2:0")
	noFlow := &Event{Reason: ReasonAllocFailed, Netns: NetnsOf(4026531840)}

	tests := []struct {
		name string
		f    Filter
		e    *Event
		want bool
	}{
		{"empty filter takes everything", Filter{}, v4, true},
		{"empty filter takes an event without a flow", Filter{}, noFlow, true},
		{"empty maps are empty sets", Filter{Reasons: map[Reason]bool{}, Netns: map[uint32]bool{}, Protos: map[uint8]bool{}}, v6, true},
		{"reason in set", Filter{Reasons: map[Reason]bool{ReasonTableFull: true, ReasonEarlyDrop: true}}, v4, true},
		{"reason not in set", Filter{Reasons: map[Reason]bool{ReasonTableFull: true}}, v6, false},
		{"reason set false", Filter{Reasons: map[Reason]bool{ReasonTableFull: false, ReasonInsert: true}}, v4, false},
		{"netns in set", Filter{Netns: map[uint32]bool{4026532500: true}}, v6, true},
		{"netns not in set", Filter{Netns: map[uint32]bool{4026532500: true}}, v4, false},
		{"proto in set", Filter{Protos: map[uint8]bool{ProtoUDP: true}}, v4, true},
		{"proto not in set", Filter{Protos: map[uint8]bool{ProtoUDP: true}}, v6, false},
		{"proto by number", Filter{Protos: map[uint8]bool{47: true}}, gre, true},
		{"proto needs a flow", Filter{Protos: map[uint8]bool{0: true}}, noFlow, false},
		{"src v4 prefix", Filter{Src: prefixes("10.0.0.0/8")}, v4, true},
		{"src v4 address", Filter{Src: prefixes("10.1.2.3")}, v4, true},
		{"src v4 other address", Filter{Src: prefixes("10.1.2.4")}, v4, false},
		{"src any of several", Filter{Src: prefixes("172.16.0.0/12", "10.1.0.0/16")}, v4, true},
		{"src matches only the source", Filter{Src: prefixes("192.168.0.0/16")}, v4, false},
		{"dst v4 prefix", Filter{Dst: prefixes("192.168.0.0/24")}, v4, true},
		{"dst matches only the destination", Filter{Dst: prefixes("10.0.0.0/8")}, v4, false},
		{"src v6 prefix", Filter{Src: prefixes("2001:db8::/64")}, v6, true},
		{"dst v6 prefix", Filter{Dst: prefixes("2001:db8:1::/48")}, v6, true},
		{"v4 prefix never matches v6", Filter{Src: prefixes("0.0.0.0/0")}, v6, false},
		{"v6 prefix never matches v4", Filter{Src: prefixes("::/0")}, v4, false},
		{"mapped address matches a v4 prefix", Filter{Src: prefixes("10.9.0.0/16")}, mapped, true},
		{"mapped address matches a mapped prefix", Filter{Dst: prefixes("::ffff:172.16.0.0/108")}, mapped, true},
		{"mapped address is not v6", Filter{Src: prefixes("::/0")}, mapped, false},
		{"address filter needs a flow", Filter{Src: prefixes("0.0.0.0/0")}, noFlow, false},
		{"all fields must match", Filter{Reasons: map[Reason]bool{ReasonTableFull: true}, Src: prefixes("10.0.0.0/8"), Dst: prefixes("192.168.0.1"), Protos: map[uint8]bool{ProtoUDP: true}, Netns: map[uint32]bool{4026531840: true}}, v4, true},
		{"one field failing fails all", Filter{Reasons: map[Reason]bool{ReasonTableFull: true}, Src: prefixes("10.0.0.0/8"), Protos: map[uint8]bool{ProtoTCP: true}}, v4, false},
	}
	for _, tt := range tests {
		if got := tt.f.Match(tt.e); got != tt.want {
			t.Errorf("%s: Match = %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestFilterIgnoresTrigger pins down that --src is about the evicted entry,
// not the flow that caused the eviction.
func TestFilterIgnoresTrigger(t *testing.T) {
	e := flowEvent(ReasonEarlyDrop, 1, ProtoTCP, "10.0.0.1:1", "10.0.0.2:2")
	trig := Tuple{Family: FamilyIPv4, Proto: ProtoUDP, Src: netip.MustParseAddrPort("192.0.2.1:3"), Dst: netip.MustParseAddrPort("192.0.2.2:4")}
	e.Trigger = &trig
	f := Filter{Src: prefixes("192.0.2.0/24")}
	if f.Match(e) {
		t.Error("filter matched the trigger's source")
	}
}

func TestParseCIDR(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr bool
	}{
		{"10.0.0.0/8", "10.0.0.0/8", false},
		{"10.1.2.3/8", "10.0.0.0/8", false},
		{"10.1.2.3", "10.1.2.3/32", false},
		{" 192.0.2.1 ", "192.0.2.1/32", false},
		{"0.0.0.0/0", "0.0.0.0/0", false},
		{"2001:db8::/32", "2001:db8::/32", false},
		{"2001:db8::1", "2001:db8::1/128", false},
		{"::/0", "::/0", false},
		{"::ffff:10.0.0.1", "10.0.0.1/32", false},
		{"::ffff:10.0.0.0/104", "10.0.0.0/8", false},
		{"::ffff:0:0/96", "0.0.0.0/0", false},
		{"", "", true},
		{"foo", "", true},
		{"10.0.0.0/33", "", true},
		{"10.0.0/8", "", true},
		{"2001:db8::/129", "", true},
		{"10.0.0.1/", "", true},
		{"fe80::1%eth0", "", true},
		{"300.1.1.1", "", true},
	}
	for _, tt := range tests {
		got, err := ParseCIDR(tt.in)
		if tt.wantErr {
			if err == nil {
				t.Errorf("ParseCIDR(%q) = %v, want an error", tt.in, got)
			} else if !strings.HasPrefix(err.Error(), "invalid") {
				t.Errorf("ParseCIDR(%q) error %q", tt.in, err)
			}
			continue
		}
		if err != nil || got.String() != tt.want {
			t.Errorf("ParseCIDR(%q) = %v, %v; want %s", tt.in, got, err, tt.want)
		}
	}
}
