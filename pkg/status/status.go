// Package status is `cttrace status`'s model, read beside the path of
// events from the tables themselves (pkg/table, nftables): every network
// namespace with
// conntrack in use, its table's fill and the kernel's counters; what the
// table costs in kernel memory now, at its max and at a max the operator
// is weighing, from the running kernel's slab; which modules hold
// nf_conntrack; and advice, each item with the figure it rests on. It
// reads; it never changes anything.
package status

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cttrace/cttrace/pkg/host"
	"github.com/cttrace/cttrace/pkg/table"
)

// Report is one reading of the host's conntrack state.
type Report struct {
	Time   time.Time
	Kernel string
	// Max and Buckets are the host's nf_conntrack_max and
	// nf_conntrack_buckets: one of each, global (other namespaces read
	// them read-only); the max applies to each namespace's own count.
	Max, Buckets int64
	Namespaces   []Namespace
	Memory       Memory
	// Holders are the modules that hold nf_conntrack loaded (nf_nat,
	// nft_ct, xt_conntrack...): why it cannot be unloaded, and a hint of
	// what uses it.
	Holders []string
	Advice  []Advice
}

// Namespace is one namespace's table.
type Namespace struct {
	table.Namespace
	Stats table.Stats
	// Err says why the statistics could not be read (they are then zero).
	Err error
	// Causes are what in the ruleset makes the kernel track connections
	// here; CausesErr why they could not be read.
	Causes    []Cause
	CausesErr error
	// filler is who fills a table at least half full (nil otherwise, or
	// when the dump failed: FillerErr).
	filler    *Filler
	FillerErr error
}

// Fill is entries / max, 0..1 (-1 when unknown).
func (n *Namespace) Fill() float64 {
	if n.Err != nil || n.Stats.Max <= 0 {
		return -1
	}
	return float64(n.Stats.Entries) / float64(n.Stats.Max)
}

// Options are what the operator asks beyond the reading.
type Options struct {
	// WhatIfMax and WhatIfBuckets (0: the same as WhatIfMax, as the
	// kernel's default sizing has it) price a different table.
	WhatIfMax, WhatIfBuckets int64
}

// holdersDir lists the modules that hold nf_conntrack.
const holdersDir = "/sys/module/nf_conntrack/holders"

// Gather reads the host's state. It needs root, or CAP_SYS_ADMIN (to enter
// each network namespace) and CAP_NET_ADMIN (to read ctnetlink); without
// them it fails at once, naming what is missing (host.ErrPrivileges),
// rather than on the first namespace.
func Gather(opts Options) (*Report, error) {
	if err := host.RequireConntrack(); err != nil {
		return nil, err
	}
	if err := host.Require("reading every namespace's table", host.CapSysAdmin, host.CapNetAdmin); err != nil {
		return nil, err
	}
	r := &Report{Time: time.Now(), Kernel: host.Release()}
	var err error
	if r.Max, err = host.ConntrackMax(); err != nil {
		return nil, err
	}
	if r.Buckets, err = host.ConntrackBuckets(); err != nil {
		return nil, err
	}
	inUse, err := table.InUse()
	if err != nil {
		return nil, fmt.Errorf("list network namespaces: %w", err)
	}
	for _, ns := range inUse {
		n := Namespace{Namespace: ns.Namespace, Stats: ns.Stats, Err: ns.Err}
		n.Causes, n.CausesErr = causes(ns.Namespace)
		if n.Err == nil && n.Fill() >= dumpedFill {
			f, err := whoFills(ns.Namespace)
			if n.FillerErr = err; err == nil {
				n.filler = &f
			}
		}
		r.Namespaces = append(r.Namespaces, n)
	}
	r.Holders = holders()
	if r.Memory, err = priceMemory(r, opts); err != nil {
		return nil, err
	}
	r.Advice = advise(r)
	return r, nil
}

// holders lists the modules that hold nf_conntrack (none when it is built
// in, or when nothing but the kernel uses it).
func holders() []string {
	entries, err := os.ReadDir(holdersDir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		out = append(out, filepath.Base(e.Name()))
	}
	return out
}
