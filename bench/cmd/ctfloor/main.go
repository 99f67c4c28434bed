// Command ctfloor attaches bench's count-only tp_btf/kfree_skb program (the
// floor: what any tracer on that hook costs at least) until SIGINT or
// SIGTERM, then prints {"drops":N} (netfilter drops counted) on stdout.
// `make bench` runs it as one of the tracers it compares.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/cttrace/cttrace/bench"
)

func main() {
	ready := flag.String("ready-file", "", "write `PATH` once the program is attached")
	flag.Parse()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)

	f, err := bench.AttachFloor()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ctfloor:", err)
		os.Exit(1)
	}
	defer f.Close()
	if *ready != "" {
		if err := os.WriteFile(*ready, []byte("floor\n"), 0o644); err != nil {
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
	fmt.Printf("{\"drops\":%d,\"reason\":%d}\n", n, f.Reason)
}
