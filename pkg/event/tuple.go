package event

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Address families as the kernel's tuple carries them (NFPROTO_*).
const (
	nfprotoIPv4 = 2
	nfprotoIPv6 = 10
)

// Family names, as printed and as filtered on.
const (
	FamilyIPv4 = "ipv4"
	FamilyIPv6 = "ipv6"
)

// IP protocol numbers cttrace names.
const (
	ProtoICMP    uint8 = 1
	ProtoTCP     uint8 = 6
	ProtoUDP     uint8 = 17
	ProtoDCCP    uint8 = 33
	ProtoGRE     uint8 = 47
	ProtoICMPv6  uint8 = 58
	ProtoSCTP    uint8 = 132
	ProtoUDPLite uint8 = 136
)

// protoNames are the names conntrack-tools prints for the protocols
// conntrack tracks; other protocols are shown by number.
var protoNames = map[uint8]string{
	ProtoICMP:    "icmp",
	ProtoTCP:     "tcp",
	ProtoUDP:     "udp",
	ProtoDCCP:    "dccp",
	ProtoGRE:     "gre",
	ProtoICMPv6:  "icmpv6",
	ProtoSCTP:    "sctp",
	ProtoUDPLite: "udplite",
}

// ProtoName names an IP protocol number: "tcp", "udp"... or the number
// itself ("89") for protocols conntrack tracks only generically.
func ProtoName(p uint8) string {
	if n, ok := protoNames[p]; ok {
		return n
	}
	return strconv.Itoa(int(p))
}

// ParseProto reads a protocol as an operator types it (for --proto): one of
// the names ProtoName gives, or a number from 0 to 255.
func ParseProto(s string) (uint8, error) {
	name := strings.ToLower(strings.TrimSpace(s))
	for p, n := range protoNames {
		if n == name {
			return p, nil
		}
	}
	n, err := strconv.ParseUint(name, 10, 8)
	if err != nil {
		return 0, fmt.Errorf("unknown protocol %q (valid: tcp, udp, icmp, icmpv6, sctp, dccp, udplite, gre, or a number 0-255)", s)
	}
	return uint8(n), nil
}

// Tuple is a flow as conntrack keys it, in the original direction.
type Tuple struct {
	Family string // FamilyIPv4 or FamilyIPv6
	Proto  uint8  // IP protocol number
	Src    netip.AddrPort
	Dst    netip.AddrPort
}

// ProtoName names the tuple's protocol (see the package-level ProtoName).
func (t Tuple) ProtoName() string { return ProtoName(t.Proto) }

// HasPorts reports whether the protocol has ports worth printing. ICMP's
// tuple carries type, code and id instead, which are not ports.
func (t Tuple) HasPorts() bool {
	return t.Proto != ProtoICMP && t.Proto != ProtoICMPv6
}

// Valid reports whether the tuple holds a flow (the zero Tuple does not).
func (t Tuple) Valid() bool { return t.Family != "" }

// TupleFromKernel builds a Tuple from struct ct_tuple's fields. Ports come
// as the kernel keeps them, in network byte order, read into a host uint16
// by the generated struct. Family 0 means the kernel had no tuple to give,
// and any family but ipv4 and ipv6 is not one conntrack tracks: both return
// false. ICMP's port fields hold type, code and id, so its ports are zero.
func TupleFromKernel(family, proto uint8, saddr, daddr [16]byte, sportBE, dportBE uint16) (Tuple, bool) {
	var src, dst netip.Addr
	var fam string
	switch family {
	case nfprotoIPv4:
		fam = FamilyIPv4
		src = netip.AddrFrom4([4]byte(saddr[:4]))
		dst = netip.AddrFrom4([4]byte(daddr[:4]))
	case nfprotoIPv6:
		fam = FamilyIPv6
		src = netip.AddrFrom16(saddr)
		dst = netip.AddrFrom16(daddr)
	default:
		return Tuple{}, false
	}
	t := Tuple{Family: fam, Proto: proto}
	var sport, dport uint16
	if t.HasPorts() {
		sport, dport = networkToHost(sportBE), networkToHost(dportBE)
	}
	t.Src = netip.AddrPortFrom(src, sport)
	t.Dst = netip.AddrPortFrom(dst, dport)
	return t, true
}

// networkToHost is ntohs: v holds the port's two bytes in network order as
// they lay in memory, read in the host's order.
func networkToHost(v uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], v)
	return binary.BigEndian.Uint16(b[:])
}

// String gives "udp 10.0.0.1:40000 → 10.0.0.2:53", the form the text output
// uses for an early_drop's trigger.
func (t Tuple) String() string {
	if !t.Valid() {
		return "-"
	}
	b := make([]byte, 0, 64)
	b = append(b, t.ProtoName()...)
	b = append(b, ' ')
	b = t.AppendEndpoint(b, t.Src)
	b = append(b, " → "...)
	b = t.AppendEndpoint(b, t.Dst)
	return string(b)
}

// AppendEndpoint appends one end of the flow as an operator reads it:
// "10.0.0.1:53", "[2001:db8::1]:443", or the bare address for ICMP, which
// has no ports.
func (t Tuple) AppendEndpoint(b []byte, ap netip.AddrPort) []byte {
	if !t.HasPorts() {
		return ap.Addr().AppendTo(b)
	}
	return ap.AppendTo(b)
}
