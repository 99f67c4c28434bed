//go:build privileged

package status

import (
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/cttrace/cttrace/internal/ctlab"
	"github.com/cttrace/cttrace/internal/testbed"
	"github.com/cttrace/cttrace/pkg/table"
)

// nftIn loads ruleset into namespace name.
func nftIn(t *testing.T, name, ruleset string) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", name, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(ruleset)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft in %s: %v: %s", name, err, out)
	}
}

func whats(cs []Cause) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Family+" "+c.Table+" "+c.Chain+": "+c.What)
	}
	return out
}

// "Why conntrack is on" names the rules a test added: nftables ct state,
// a NAT chain and its masquerade, an iptables conntrack match (through
// iptables-nft, where it is installed); and nothing for stateless rules.
func TestWhyConntrackIsOn(t *testing.T) {
	testbed.RequireRoot(t)
	stateful := ctlab.New(t) // its ruleset: inet ctlab output, ct state new accept
	nat := ctlab.New(t)
	nftIn(t, nat.Name(), "table ip cttrace_nat {\n chain post {\n  type nat hook postrouting priority 100;\n  oifname \"lo\" masquerade\n }\n}\n")
	bare := "cttrace-stateless-" + strings.TrimPrefix(nat.Name(), "ctlab-")
	if out, err := exec.Command("ip", "netns", "add", bare).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", bare).Run() })
	nftIn(t, bare, "table inet stateless {\n chain input {\n  type filter hook input priority 0;\n  ip saddr 192.0.2.1 drop\n  tcp dport 22 accept\n }\n}\n")

	check := func(name string, want []string) {
		t.Helper()
		got, err := causes(table.Namespace{Path: "/run/netns/" + name, Name: name})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if g := whats(got); !slices.Equal(g, want) {
			t.Errorf("%s: causes %q, want %q", name, g, want)
		}
	}
	check(stateful.Name(), []string{"inet ctlab output: ct state"})
	check(nat.Name(), []string{"inet ctlab output: ct state", "ip cttrace_nat post: nat chain", "ip cttrace_nat post: masquerade"})
	check(bare, nil)

	if out, err := exec.Command("iptables", "-V").CombinedOutput(); err != nil || !strings.Contains(string(out), "nf_tables") {
		t.Logf("no iptables-nft here (%s): its match is not checked", strings.TrimSpace(string(out)))
		return
	}
	ipt := ctlab.New(t)
	if out, err := exec.Command("ip", "netns", "exec", ipt.Name(), "iptables", "-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED", "-j", "ACCEPT").CombinedOutput(); err != nil {
		t.Fatalf("iptables: %v: %s", err, out)
	}
	check(ipt.Name(), []string{"inet ctlab output: ct state", "ip filter INPUT: iptables -m conntrack"})
}
