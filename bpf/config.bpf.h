/* SPDX-License-Identifier: GPL-2.0 OR Apache-2.0 */
/*
 * What user space decides: the load-time configuration, one struct of
 * constants that pkg/probe/config.go fills from probe.Options and sets with
 * one call before load, and the few run-time knobs it writes while the
 * programs run.
 *
 * The configuration lives in .rodata, which cilium/ebpf freezes at load: a
 * read-only, frozen map's contents are known to the verifier (commit
 * a23740ec43ba, "bpf: Track contents of read-only maps as scalars", 5.5),
 * so each `if (cfg.x)` is decided at verification and the branch it
 * rules out is never verified nor run (and, for privileged loads, removed).
 * `volatile` keeps the compiler from folding the defaults below into the
 * code instead of reading them.
 */
#ifndef CONFIG_BPF_H
#define CONFIG_BPF_H

#include "vmlinux.h"

struct ct_config {
	/* Event types streamed through the ring buffer (bit 1 << type); the
	 * others are only counted. */
	__u32 stream_mask;
	/* Whether events are also counted per namespace (top-sources, serve),
	 * and per source in the sources map (unless serve exports no source
	 * series), and the prefix lengths sources are grouped by. */
	__u32 count_namespaces;
	__u32 count_sources;
	__u32 group_v4_bits;
	__u32 group_v6_bits;
	/* Events each CPU streams one by one per second before it aggregates
	 * them per source (stream.bpf.h, the bounded stream); 0: no limit. */
	__u32 stream_per_cpu_per_s;
	/* Whether only the namespaces in stream_netns are streamed or
	 * aggregated (--netns; stream.bpf.h). */
	__u32 netns_filter;
	/* The ring buffer wakes its reader only once this many bytes wait, or
	 * when user space polls (every 100 ms): a wakeup per event costs the
	 * producing CPU an irq_work and the reader a context switch, per
	 * refused packet. User space sets an eighth of the ring. */
	__u32 wakeup_bytes;
	/* Whether the allocation's scratch state is kept per task
	 * (alloc_task_state) rather than per CPU: set where tracing programs
	 * may use task-local storage (5.12; cttrace.bpf.c, alloc_scratch). */
	__u32 alloc_state_per_task;
	/* Whether the delete hook is attached to a compiler-split clone of
	 * nf_ct_delete (core_fixes.bpf.h, delete_clone). */
	__u32 delete_hook_is_clone;
	/* Whether namespaces are keyed by their netns cookie rather than their
	 * inode number (conn.bpf.h, net_id). */
	__u32 netns_cookie;
	/* The aggregated map's sketches follow the sources map's in the
	 * sketches array (sketch.bpf.h): the possible CPUs, or 0 where
	 * sources are not counted. */
	__u32 sketch_aggregated_base;
	/* Whether bpf_jiffies64() may be called here, so that what needs the
	 * time only to a tick reads the clock once a tick per CPU
	 * (accounting.bpf.h, tick_time). */
	__u32 tick_clock;
	/* Seeds the sketch's hash, drawn at random at each load, so that an
	 * attacker cannot choose sources that share its cells. */
	__u64 sketch_seed;
};

/* Defaults for a load that sets nothing (tests): everything streamed. */
volatile const struct ct_config cfg = {
	.stream_mask = 0xffffffff,
	.group_v4_bits = 32,
	.group_v6_bits = 128,
	.wakeup_bytes = 1 << 19,
};

/* Whether user space wants the type's events one by one. */
static __always_inline bool streamed(__u32 type)
{
	return cfg.stream_mask & (1U << type);
}

/*
 * Run-time knobs: ordinary globals (.bss) that user space writes while the
 * programs run, so their values are unknown to the verifier and read at
 * every use.
 */

/* nf_conntrack_max as user space last read it: the limit is a global that
 * has no BTF-visible symbol, and non-init namespaces only see it read-only. */
__u32 ct_max;

/* Sample and hold (accounting.bpf.h): a source the sources map does not hold
 * is admitted with probability 2^-admit_shift. User space raises it when it
 * sees the map churning under a spoofed flood (0: admit every source,
 * exact). */
__u32 admit_shift;

/* The same for the aggregated map (stream.bpf.h). */
__u32 agg_admit_shift;

#endif
