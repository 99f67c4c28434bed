package top

import (
	"fmt"
	"net/netip"

	"github.com/cttrace/cttrace/pkg/event"
)

// Key is one source, or one prefix of sources, in one network namespace:
// the unit a row of `cttrace top-sources` stands for. The same address in
// two namespaces is two sources, because each namespace has its own table.
type Key struct {
	Netns  event.Netns
	Prefix netip.Prefix // masked to the grouping's length; invalid: no source known
}

// Valid reports whether the key names a source. Events without a flow get
// an invalid key, and what they count goes to the "other" row.
func (k Key) Valid() bool { return k.Prefix.IsValid() }

// Grouping says how many leading bits of a source address make one row:
// /32 and /128 give one row per address, /24 and /64 one per subnet, which
// is how a spoofed flood from one network becomes one row instead of
// thousands. Zero means the default (32 and 128).
type Grouping struct {
	V4Bits, V6Bits int
}

// DefaultGrouping gives one row per source address.
var DefaultGrouping = Grouping{V4Bits: 32, V6Bits: 128}

// Validate reports a prefix length no address family has.
func (g Grouping) Validate() error {
	if g.V4Bits < 0 || g.V4Bits > 32 {
		return fmt.Errorf("invalid ipv4 grouping /%d (want 1 to 32)", g.V4Bits)
	}
	if g.V6Bits < 0 || g.V6Bits > 128 {
		return fmt.Errorf("invalid ipv6 grouping /%d (want 1 to 128)", g.V6Bits)
	}
	return nil
}

func (g Grouping) v4Bits() int {
	if g.V4Bits == 0 {
		return DefaultGrouping.V4Bits
	}
	return g.V4Bits
}

func (g Grouping) v6Bits() int {
	if g.V6Bits == 0 {
		return DefaultGrouping.V6Bits
	}
	return g.V6Bits
}

// KeyFor groups the source src in namespace netns. An IPv4 address seen
// through an IPv6 socket (::ffff:a.b.c.d) is grouped as the IPv4 address it
// is, so one client is one row whichever way it came in. An invalid src, or
// a grouping Validate rejects, gives an invalid key.
func (g Grouping) KeyFor(netns event.Netns, src netip.Addr) Key {
	src = src.Unmap()
	bits := g.v6Bits()
	if src.Is4() {
		bits = g.v4Bits()
	}
	p, err := src.Prefix(bits) // masks, and drops any zone
	if err != nil {
		return Key{Netns: netns}
	}
	return Key{Netns: netns, Prefix: p}
}
