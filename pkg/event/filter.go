package event

import (
	"fmt"
	"net/netip"
	"strings"
)

// Filter selects events. Each field left empty selects everything; fields
// set are all required (AND), values within one field are alternatives (OR).
type Filter struct {
	Reasons map[Reason]bool
	// Netns selects namespaces by inode number, as operators name them.
	Netns map[uint32]bool
	// Src and Dst match the flow's (original direction) addresses, not an
	// early_drop's trigger.
	Src, Dst []netip.Prefix
	Protos   map[uint8]bool
}

// Match reports whether the filter selects e.
func (f *Filter) Match(e *Event) bool {
	if len(f.Reasons) > 0 && !f.Reasons[e.Reason] {
		return false
	}
	if len(f.Netns) > 0 && !f.Netns[e.Netns.Inode] {
		return false
	}
	if len(f.Protos) > 0 && (!e.Flow.Valid() || !f.Protos[e.Flow.Proto]) {
		return false
	}
	if len(f.Src) > 0 && !addrIn(f.Src, e.Flow, e.Flow.Src.Addr()) {
		return false
	}
	if len(f.Dst) > 0 && !addrIn(f.Dst, e.Flow, e.Flow.Dst.Addr()) {
		return false
	}
	return true
}

// addrIn reports whether a is in one of prefixes. An IPv4 flow seen through
// an IPv6 socket arrives as ::ffff:a.b.c.d; it is unmapped so 10.0.0.0/8
// finds it. netip never matches an IPv4 prefix against an IPv6 address.
func addrIn(prefixes []netip.Prefix, t Tuple, a netip.Addr) bool {
	if !t.Valid() {
		return false
	}
	a = a.Unmap()
	for _, p := range prefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// ParseCIDR reads an address or prefix as an operator types it (for --src
// and --dst): "10.0.0.0/8", "2001:db8::/32", or a plain address, taken as
// /32 or /128. An IPv4-mapped IPv6 prefix is unmapped, as Match unmaps
// addresses, so that it can match.
func ParseCIDR(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("invalid address %q: want an IP address or a prefix like 10.0.0.0/8", s)
		}
		if a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("invalid address %q: conntrack tuples carry no IPv6 zone", s)
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid prefix %q: want an IP address or a prefix like 10.0.0.0/8", s)
	}
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}

// MatchAggregate reports whether an aggregate passes the filter. Only the
// namespace, reason and source filters apply: an aggregate counts a
// source's events whatever their destination and protocol. The "other"
// aggregate, which names no source, passes a source filter too: it may
// hold events of matching sources the kernel's bounded map could not name.
func (f *Filter) MatchAggregate(a *Aggregate) bool {
	if len(f.Netns) > 0 && a.Netns.ID != 0 && !f.Netns[a.Netns.Inode] {
		return false
	}
	if len(f.Reasons) > 0 && !f.Reasons[a.Reason] {
		return false
	}
	if len(f.Src) > 0 && !a.IsOther() {
		for _, p := range f.Src {
			if p.Contains(a.Source.Unmap()) {
				return true
			}
		}
		return false
	}
	return true
}
