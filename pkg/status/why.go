package status

import (
	"fmt"
	"os"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/cttrace/cttrace/pkg/table"
)

// Cause is one thing in a namespace's ruleset that makes the kernel track
// connections there: a rule that matches on conntrack state or needs an
// entry (NAT, ct count), or a NAT chain. Rules written with iptables-nft
// are nftables rules, and show up as their xt match or target.
type Cause struct {
	Family, Table, Chain string
	// Handle is the rule's handle (nft -a list ruleset shows it); 0 for a
	// chain.
	Handle uint64
	What   string // "ct state", "nat chain", "masquerade", "iptables -m conntrack"...
}

func (c Cause) String() string {
	if c.Handle == 0 {
		return fmt.Sprintf("%s: table %s %s chain %s", c.What, c.Family, c.Table, c.Chain)
	}
	return fmt.Sprintf("%s: table %s %s chain %s, rule handle %d", c.What, c.Family, c.Table, c.Chain, c.Handle)
}

// causes reads ns's nftables ruleset through netlink (github.com/google/
// nftables, in the namespace) and returns what needs conntrack in it.
// iptables-legacy rules, which nftables cannot see, are not read.
func causes(ns table.Namespace) ([]Cause, error) {
	f, err := os.Open(ns.Path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", ns, err)
	}
	defer f.Close()
	conn, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		return nil, fmt.Errorf("nftables in %s: %w", ns, err)
	}
	defer conn.CloseLasting()
	chains, err := conn.ListChains()
	if err != nil {
		return nil, fmt.Errorf("nftables chains of %s: %w", ns, err)
	}
	var out []Cause
	for _, ch := range chains {
		where := Cause{Family: familyName(ch.Table.Family), Table: ch.Table.Name, Chain: ch.Name}
		if ch.Type == nftables.ChainTypeNAT {
			c := where
			c.What = "nat chain"
			out = append(out, c)
		}
		rules, err := conn.GetRules(ch.Table, ch)
		if err != nil {
			return out, fmt.Errorf("nftables rules of %s chain %s: %w", ns, ch.Name, err)
		}
		for _, r := range rules {
			for _, e := range r.Exprs {
				if what := needsConntrack(e); what != "" {
					c := where
					c.Handle, c.What = r.Handle, what
					out = append(out, c)
					break
				}
			}
		}
	}
	return out, nil
}

// ctKeys names the conntrack keys rules match on, as nft writes them.
var ctKeys = map[expr.CtKey]string{
	expr.CtKeySTATE: "state", expr.CtKeyDIRECTION: "direction", expr.CtKeySTATUS: "status", expr.CtKeyMARK: "mark",
	expr.CtKeySECMARK: "secmark", expr.CtKeyEXPIRATION: "expiration", expr.CtKeyHELPER: "helper",
	expr.CtKeyL3PROTOCOL: "l3proto", expr.CtKeySRC: "original saddr", expr.CtKeyDST: "original daddr",
	expr.CtKeyPROTOCOL: "protocol", expr.CtKeyPROTOSRC: "proto-src", expr.CtKeyPROTODST: "proto-dst",
	expr.CtKeyLABELS: "label", expr.CtKeyPKTS: "packets", expr.CtKeyBYTES: "bytes", expr.CtKeyAVGPKT: "avgpkt",
	expr.CtKeyZONE: "zone", expr.CtKeyEVENTMASK: "event",
}

// xtNeeds are the iptables matches and targets (through iptables-nft)
// that need conntrack.
var xtNeeds = map[string]bool{
	"conntrack": true, "state": true, "connlimit": true, "connmark": true, "connbytes": true, "helper": true, "conntrack_helper": true,
	"MASQUERADE": true, "SNAT": true, "DNAT": true, "REDIRECT": true, "NETMAP": true, "CONNMARK": true, "CT": true,
}

// needsConntrack says what about e needs conntrack, or "".
func needsConntrack(e expr.Any) string {
	switch e := e.(type) {
	case *expr.Ct:
		if name, ok := ctKeys[e.Key]; ok {
			return "ct " + name
		}
		return "ct"
	case *expr.Connlimit:
		return "ct count"
	case *expr.NAT:
		if e.Type == expr.NATTypeDestNAT {
			return "dnat"
		}
		return "snat"
	case *expr.Masq:
		return "masquerade"
	case *expr.Redir:
		return "redirect"
	case *expr.Match:
		if xtNeeds[e.Name] {
			return "iptables -m " + e.Name
		}
	case *expr.Target:
		if xtNeeds[e.Name] {
			return "iptables -j " + e.Name
		}
	}
	return ""
}

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyINet:
		return "inet"
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyIPv6:
		return "ip6"
	case nftables.TableFamilyBridge:
		return "bridge"
	case nftables.TableFamilyNetdev:
		return "netdev"
	case nftables.TableFamilyARP:
		return "arp"
	}
	return fmt.Sprint(int(f))
}
