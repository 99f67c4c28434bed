package main

import (
	"fmt"
	"os"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/cttrace/cttrace/internal/demo"
	"github.com/cttrace/cttrace/pkg/host"
)

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "show what cttrace sees on a small, real attack in a throwaway namespace (about 20 s)",
		Description: "Creates a network namespace (cttrace-demo-XXXX) with a stateful nftables rule,\n" +
			"fills its conntrack table with TCP connections (never evicted) and one-way UDP\n" +
			"flows (evictable), then sends new UDP flows from three heavy sources and from\n" +
			"random spoofed ones, over the namespace's own loopback only, while `cttrace drops`\n" +
			"and `cttrace top-sources` watch; then explains what was seen.\n\n" +
			"Its effect on the host: the namespace and its rules are deleted at the end, on\n" +
			"Ctrl-C and on SIGTERM. nf_conntrack_max is global (every namespace's count is\n" +
			"compared with it), so the demo lowers it only as far as leaves every namespace\n" +
			"room to double its current count (and never below 2048), restores it on every\n" +
			"exit, and refuses to run when that would take a table of more than 65536\n" +
			"entries. Killed with SIGKILL it cannot restore it: the command to do so is\n" +
			"printed first. If no rule had loaded nf_conntrack yet, the demo's does, and the\n" +
			"module stays loaded. Needs root, ip(8) and nft(8).\n\n" +
			"Examples:\n" +
			"   sudo cttrace demo\n" +
			"   sudo cttrace demo --attack 20s",
		Flags: []cli.Flag{
			&cli.DurationFlag{Name: "attack", Value: 10 * time.Second, Usage: "attack for `DURATION` (1s to 60s)"},
		},
		Action: runDemo,
	}
}

func runDemo(c *cli.Context) error {
	attack := c.Duration("attack")
	if attack < time.Second || attack > time.Minute {
		return invalidFlag("attack", attack.String(), "1s to 60s")
	}
	// It creates a network namespace and loads BPF programs.
	if err := host.Require("the demo", host.CapSysAdmin, host.CapNetAdmin); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find cttrace's own binary: %w", err)
	}
	ctx, stop := signalContext(c.Context)
	defer stop()
	ignoreSIGPIPE()
	o := demo.Options{Cttrace: self, Attack: attack, Out: c.App.Writer}
	if isTerminal(os.Stdout) {
		o.Terminal = os.Stdout
	}
	return demo.Run(ctx, o)
}
