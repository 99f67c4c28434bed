package status

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cttrace/cttrace/pkg/table"
	"github.com/cttrace/cttrace/pkg/topk"
)

// Prefix grouping for the advice: a /24 (IPv4) or /64 (IPv6) is what one
// client network, or one attacker's range, usually is.
var prefixGrouping = topk.Grouping{V4Bits: 24, V6Bits: 64}

// dumpedFill is the fill past which status dumps a namespace's table to
// find who fills it (a dump costs time in proportion to the table).
const dumpedFill = 0.5

// dominantShare is the share of a table one prefix must hold for the
// advice to name it.
const dominantShare = 0.5

// Holder is the prefix holding the most entries of a namespace's table.
type Holder struct {
	Prefix         netip.Prefix
	Entries, Total int64
}

// topHolder dumps ns's table and returns its largest holder by prefix,
// counted in bounded memory (a Space-Saving counter of 1024 prefixes: a
// table of a million spoofed sources costs what one of a thousand does).
func topHolder(ns table.Namespace) (Holder, error) {
	tr, err := topk.NewTracker(1024, prefixGrouping)
	if err != nil {
		return Holder{}, err
	}
	var h Holder
	err = ns.DumpBySource(func(src netip.Addr, _ uint32) error {
		tr.AddHeld(prefixGrouping.KeyFor(ns.Inode, src), 1)
		h.Total++
		return nil
	})
	if err != nil && !errors.Is(err, table.ErrDumpInterrupted) {
		return h, fmt.Errorf("dump %s: %w", ns, err)
	}
	for _, r := range tr.Snapshot().Rows {
		if r.Held > h.Entries {
			h.Prefix, h.Entries = r.Prefix, r.Held
		}
	}
	return h, nil
}

// prefixAdvice names the prefix that fills ns's table, with an nftables
// ruleset that caps its entries: the operator can read it, then apply it
// with `nft -f` inside the namespace. The cap is a tenth of the max, so
// that the prefix keeps working while the rest of the table is free for
// everyone else. Rules go at priority -150: after conntrack (-200), which
// `ct count` needs, and before the filter chains; a packet they drop never
// confirms its entry, so the table stops filling.
func prefixAdvice(ns *Namespace, h Holder) (Advice, bool) {
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
