// Command ctfloor attaches one of bench's floor programs until SIGINT or
// SIGTERM, then prints {"drops":N} on stdout: by default the count-only
// tp_btf/kfree_skb program (netfilter drops counted: what any tracer on
// that hook costs at least); with -hooks fentry or -hooks kprobe, the
// per-flow floor of those backends (empty programs on the entry and exit of
// __nf_conntrack_alloc and __nf_conntrack_confirm, counting failed
// allocations). `make bench` runs it as one of the tracers it compares.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/cttrace/cttrace/bench"
)

// floor is what both floors offer.
type floor interface {
	Count() (uint64, error)
	Close()
}

func main() {
	ready := flag.String("ready-file", "", "write `PATH` once the programs are attached")
	hooks := flag.String("hooks", "", "attach the per-flow floor of `BACKEND` (fentry or kprobe) instead of the kfree_skb one")
	flag.Parse()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)

	f, label, err := attach(*hooks)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ctfloor:", err)
		os.Exit(1)
	}
	defer f.Close()
	if *ready != "" {
		if err := os.WriteFile(*ready, []byte(label+"\n"), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "ctfloor:", err)
			f.Close()
			os.Exit(1)
		}
	}
	<-sig
	n, err := f.Count()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ctfloor: read counter:", err)
		f.Close()
		os.Exit(1)
	}
	fmt.Printf("{\"drops\":%d}\n", n)
}

// attach attaches the floor asked for; label goes in the ready file (the
// backend, as cttrace's ready file says).
func attach(hooks string) (floor, string, error) {
	if hooks != "" {
		f, err := bench.AttachHookFloor(hooks)
		return f, hooks, err
	}
	f, err := bench.AttachFloor()
	return f, "tracepoint", err
}
