package status

import (
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/cttrace/cttrace/pkg/event"
	"github.com/cttrace/cttrace/pkg/table"
	"github.com/cttrace/cttrace/pkg/top"
)

// Prefix grouping for the advice: a /24 (IPv4) or /64 (IPv6) is what one
// client network, or one attacker's range, usually is.
var prefixGrouping = top.Grouping{V4Bits: 24, V6Bits: 64}

// dumpedFill is the fill past which status dumps a namespace's table to
// find who fills it (a dump costs time in proportion to the table).
const dumpedFill = 0.5

// dominantShare is the share of a table one prefix must hold for the
// advice to name it.
const dominantShare = 0.5

// Filler is who fills a namespace's table, from one dump of it: the prefix
// holding the most entries, and the service (protocol and destination
// port) with the most unreplied entries.
type Filler struct {
	Total   int64
	Prefix  netip.Prefix
	Entries int64 // of Prefix
	Proto   uint8
	Port    uint16
	// Unreplied is the service's entries that never saw a reply: flows a
	// stateless service (DNS, syslog, NTP) needs no state for.
	Unreplied int64
}

type service struct {
	proto uint8
	port  uint16
}

// whoFills dumps ns's table and counts its entries per prefix, in bounded
// memory (a Space-Saving counter of 1024 prefixes: a table of a million
// spoofed sources costs what one of a thousand does), and its unreplied
// entries per service (at most one counter per protocol and port).
func whoFills(ns table.Namespace) (Filler, error) {
	tr, err := top.NewHistory(1024, prefixGrouping)
	if err != nil {
		return Filler{}, err
	}
	var f Filler
	unreplied := map[service]int64{}
	err = ns.Dump(func(e table.Entry) error {
		tr.AddHeld(prefixGrouping.KeyFor(event.NetnsOf(ns.Inode), e.Src.Addr()), 1)
		if e.Status&table.StatusSeenReply == 0 && e.Dst.Port() != 0 {
			unreplied[service{e.Proto, e.Dst.Port()}]++
		}
		f.Total++
		return nil
	})
	if err != nil && !errors.Is(err, table.ErrDumpInterrupted) {
		return f, fmt.Errorf("dump %s: %w", ns, err)
	}
	for _, r := range tr.Read().Rows {
		if r.Total.Held > f.Entries {
			f.Prefix, f.Entries = r.Prefix, r.Total.Held
		}
	}
	for s, n := range unreplied {
		if n > f.Unreplied {
			f.Proto, f.Port, f.Unreplied = s.proto, s.port, n
		}
	}
	return f, nil
}

// prefixAdvice names the prefix that fills ns's table, with an nftables
// ruleset that caps its entries: the operator can read it, then apply it
// with `nft -f` inside the namespace. The cap is a tenth of the max, so
// that the prefix keeps working while the rest of the table is free for
// everyone else. Rules go at priority -150: after conntrack (-200), which
// `ct count` needs, and before the filter chains; a packet they drop never
// confirms its entry, so the table stops filling.
func prefixAdvice(ns *Namespace, h Filler) (Advice, bool) {
	if h.Total == 0 || float64(h.Entries) < dominantShare*float64(h.Total) {
		return Advice{}, false
	}
	limit := max(ns.Stats.Max/10, 1)
	family := "ip"
	if h.Prefix.Addr().Is6() {
		family = "ip6"
	}
	match := fmt.Sprintf("%s saddr %s ct state new ct count over %d drop", family, h.Prefix, limit)
	rule := fmt.Sprintf("table inet cttrace_advice {\n"+
		"\tchain incoming {\n\t\ttype filter hook prerouting priority -150; policy accept;\n\t\t%s\n\t}\n"+
		"\tchain local {\n\t\ttype filter hook output priority -150; policy accept;\n\t\t%s\n\t}\n}\n", match, match)
	return Advice{Kind: "prefix", Netns: ns.Inode,
		Text: fmt.Sprintf("%s holds %.0f%% of %s's table: cap its entries at %d (a tenth of the max) with the nftables rules below, applied inside the namespace with nft -f",
			h.Prefix, 100*float64(h.Entries)/float64(h.Total), ns.Namespace, limit),
		Basis: fmt.Sprintf("%d of %d entries dumped are from %s", h.Entries, h.Total, h.Prefix),
		Rule:  rule}, true
}

// serviceAdvice names the service whose unreplied flows fill ns's table,
// with a ruleset that stops tracking it: notrack in the raw priority
// (-300, before conntrack), which is right only where no stateful rule
// needs those flows (the advice says so).
func serviceAdvice(ns *Namespace, f Filler) (Advice, bool) {
	if f.Total == 0 || float64(f.Unreplied) < dominantShare*float64(f.Total) {
		return Advice{}, false
	}
	proto := event.ProtoName(f.Proto)
	if f.Proto != unix.IPPROTO_TCP && f.Proto != unix.IPPROTO_UDP {
		return Advice{}, false // nft matches ports by protocol name: tcp and udp are what floods use
	}
	match := fmt.Sprintf("%s dport %d notrack", proto, f.Port)
	rule := fmt.Sprintf("table inet cttrace_notrack {\n"+
		"\tchain incoming {\n\t\ttype filter hook prerouting priority -300; policy accept;\n\t\t%s\n\t}\n"+
		"\tchain local {\n\t\ttype filter hook output priority -300; policy accept;\n\t\t%s\n\t}\n}\n", match, match)
	return Advice{Kind: "service", Netns: ns.Inode,
		Text: fmt.Sprintf("unreplied %s flows to port %d are %.0f%% of %s's table: if no stateful rule needs them (a DNS or syslog server answers statelessly), stop tracking them with the nftables rules below, applied inside the namespace with nft -f",
			proto, f.Port, 100*float64(f.Unreplied)/float64(f.Total), ns.Namespace),
		Basis: fmt.Sprintf("%d of %d entries dumped are %s to port %d without a reply", f.Unreplied, f.Total, proto, f.Port),
		Rule:  rule}, true
}
